"""The optimiser contract: what the tuner relies on from an :class:`~bbt.tuner.optimizers.
Optimizer`, as a pytest class to subclass.

::

    from bbt.testing.contracts import OptimizerContract

    class TestMyOptimizer(OptimizerContract):
        name = "myopt"  # a registered name (code or the ``bbt.optimizers`` entry points)

    class TestMyOtherOptimizer(OptimizerContract):
        @pytest.fixture
        def factory(self) -> OptimizerFactory:
            return MyOptimizer  # any (OptimizerSpec) -> Optimizer

Every test builds optimisers from :attr:`OptimizerContract.spec` (or a bounded variant of
it) and checks only what :class:`~bbt.tuner.tuner.Tuner` and a checkpoint need: the shape,
dtype and stability of ``ask()``, the ask/tell alternation, a state that is JSON-able data
and arrays and continues bit for bit after a checkpoint round trip, determinism from the
spec, bounds, the types of ``mean``/``sigma``/``stop``, and (a weak, honest bar) progress on
a quadratic. It imports neither FastAPI nor torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import pytest

from bbt.tuner.optimizers import Optimizer, OptimizerFactory, OptimizerSpec, get

F64 = np.ndarray[Any, np.dtype[np.float64]]
Loss = Callable[[F64], F64]

#: Where :func:`sphere` has its minimum, in every coordinate.
OPTIMUM = 0.3


def sphere(pop: F64) -> F64:
    """The loss of each candidate of ``pop`` [P, d]: squared distance to (0.3, ..., 0.3)."""
    out: F64 = np.asarray((pop - OPTIMUM) ** 2, dtype=np.float64).sum(axis=1)
    return out


def assert_json_and_arrays_only(value: Any, where: str = "state") -> None:
    """Fail unless ``value`` is built of dicts with str keys, lists, JSON scalars and NumPy
    arrays of plain dtypes: what a checkpoint stores without pickle."""
    if isinstance(value, dict):
        for k, v in value.items():
            assert isinstance(k, str), f"{where}: key {k!r} is not a str"
            assert_json_and_arrays_only(v, f"{where}[{k!r}]")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            assert_json_and_arrays_only(v, f"{where}[{i}]")
    elif isinstance(value, np.ndarray):
        assert not value.dtype.hasobject, f"{where}: an array of Python objects"
    else:
        ok = value is None or isinstance(value, bool | int | float | str)
        assert ok, f"{where}: {type(value).__name__} is not JSON-able data or an array"


def through_a_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """``state`` as a resumed run gets it back: written as JSON + npz, read without pickle."""
    from bbt.tuner import checkpoint

    out: dict[str, Any] = checkpoint.decode_payload(checkpoint.encode_payload({"s": state}))["s"]
    return out


def assert_continue_alike(ref: Optimizer, copy: Optimizer, loss: Loss = sphere) -> None:
    """Two optimisers in the same state ask the same populations, bit for bit, for six
    generations, and end with the same step size and mean."""
    for _ in range(6):
        a, b = ref.ask(), copy.ask()
        np.testing.assert_array_equal(a, b)
        ref.tell(loss(a))
        copy.tell(loss(b))
    assert ref.sigma == copy.sigma or (math.isnan(ref.sigma) and math.isnan(copy.sigma))
    np.testing.assert_array_equal(ref.mean(), copy.mean())


class OptimizerContract:
    """The contract of an optimiser. Subclass it and set :attr:`name` or provide ``factory``."""

    #: A registered optimiser name; the default ``factory`` looks it up.
    name: ClassVar[str | None] = None
    #: What the tests build from (override for an optimiser with other needs).
    spec: ClassVar[OptimizerSpec] = OptimizerSpec(dim=12, popsize=6, sigma=0.5, sampler_seed=12345)
    #: Generations of the quadratic test (popsize candidates each).
    generations: ClassVar[int] = 40

    @pytest.fixture
    def factory(self) -> OptimizerFactory:
        """Builds the optimiser under test from an :class:`OptimizerSpec`."""
        if self.name is None:
            raise NotImplementedError(
                "an OptimizerContract subclass sets `name` or provides a `factory` fixture"
            )
        return get(self.name)

    def expected_dim(self, spec: OptimizerSpec) -> int:
        """The width of z the optimiser built from ``spec`` searches (override when it is
        not ``spec.dim``, as for BBTv2's L layers of ``spec.dim`` each)."""
        return spec.dim

    # ------------------------------------------------------------------ the protocol

    def test_it_is_an_optimizer_of_the_specs_size(self, factory: OptimizerFactory) -> None:
        opt = factory(self.spec)
        assert isinstance(opt, Optimizer), "missing members of bbt.tuner.optimizers.Optimizer"
        assert isinstance(opt.dim, int)
        assert isinstance(opt.popsize, int)
        assert (opt.dim, opt.popsize) == (self.expected_dim(self.spec), self.spec.popsize)
        assert opt.pending is None

    def test_ask_is_a_float64_population_stable_until_tell(self, factory: OptimizerFactory) -> None:
        opt = factory(self.spec)
        pop = opt.ask()
        assert isinstance(pop, np.ndarray)
        assert pop.shape == (opt.popsize, opt.dim)
        assert pop.dtype == np.float64
        assert np.isfinite(pop).all()
        # The tuner may ask again (a retried generation) and scores `pending`.
        np.testing.assert_array_equal(opt.ask(), pop)
        assert opt.pending is not None
        np.testing.assert_array_equal(opt.pending, pop)
        opt.tell(sphere(pop))
        assert opt.pending is None
        assert not np.array_equal(opt.ask(), pop), "a new generation asks new candidates"

    def test_tell_refuses_a_wrong_count_and_then_takes_the_right_one(
        self, factory: OptimizerFactory
    ) -> None:
        opt = factory(self.spec)
        pop = opt.ask()
        for count in (opt.popsize - 1, opt.popsize + 1):
            # The message says how many losses are wanted.
            with pytest.raises(ValueError, match=rf"\b{opt.popsize}\b"):
                opt.tell([1.0] * count)
        np.testing.assert_array_equal(opt.pending, pop)  # a refused tell changes nothing
        opt.tell(sphere(pop))
        assert opt.pending is None

    def test_tell_without_ask_is_refused(self, factory: OptimizerFactory) -> None:
        opt = factory(self.spec)
        with pytest.raises(RuntimeError):
            opt.tell([1.0] * opt.popsize)
        pop = opt.ask()
        opt.tell(sphere(pop))
        with pytest.raises(RuntimeError):  # the same generation told twice
            opt.tell(sphere(pop))

    def test_mean_sigma_and_stop_types(self, factory: OptimizerFactory) -> None:
        opt = factory(self.spec)
        for _ in range(2):
            opt.tell(sphere(opt.ask()))
        mean = opt.mean()
        assert isinstance(mean, np.ndarray)
        assert mean.shape == (opt.dim,)
        assert mean.dtype == np.float64
        assert np.isfinite(mean).all()
        assert isinstance(opt.sigma, float)
        assert math.isnan(opt.sigma) or opt.sigma > 0  # NaN: "means nothing here"
        stops = opt.stop()
        assert isinstance(stops, dict)
        assert all(isinstance(k, str) for k in stops)

    # ------------------------------------------------------------------ state

    def test_state_dict_is_json_and_arrays_only(self, factory: OptimizerFactory) -> None:
        opt = factory(self.spec)
        assert_json_and_arrays_only(opt.state_dict(), "state_dict() at the start")
        for _ in range(3):
            opt.tell(sphere(opt.ask()))
        assert_json_and_arrays_only(opt.state_dict())

    def test_a_state_dict_taken_mid_run_continues_bit_for_bit(
        self, factory: OptimizerFactory
    ) -> None:
        ref = factory(self.spec)
        for _ in range(5):
            ref.tell(sphere(ref.ask()))
        copy = factory(self.spec)  # a fresh one, as a resumed run builds it
        copy.load_state_dict(through_a_checkpoint(ref.state_dict()))
        assert_continue_alike(ref, copy)

    def test_a_foreign_state_is_refused(self, factory: OptimizerFactory) -> None:
        with pytest.raises(ValueError, match=r"\S"):  # with a message, not a KeyError
            factory(self.spec).load_state_dict({"format": "something-else/1"})

    def test_the_same_spec_runs_the_same(self, factory: OptimizerFactory) -> None:
        assert_continue_alike(factory(self.spec), factory(self.spec))

    # ------------------------------------------------------------------ search

    def test_bounds_hold_every_candidate(self, factory: OptimizerFactory) -> None:
        s = self.spec
        bound = 0.25
        opt = factory(OptimizerSpec(s.dim, s.popsize, 5.0, s.sampler_seed, bound=bound))
        for _ in range(4):
            pop = opt.ask()
            assert np.abs(pop).max() <= bound
            opt.tell(sphere(pop))
        assert np.abs(opt.mean()).max() <= bound

    def test_it_improves_on_a_quadratic(self, factory: OptimizerFactory) -> None:
        """A weak bar: within :attr:`generations`, the best candidate is a quarter below
        the loss of the start (z = 0). BBTv2's schedule over 3 x 12 dimensions gets about
        half; CMA-ES far more."""
        opt = factory(self.spec)
        start = float(sphere(np.zeros((1, opt.dim)))[0])
        best = math.inf
        for _ in range(self.generations):
            losses = sphere(opt.ask())
            best = min(best, float(losses.min()))
            opt.tell(losses)
        assert best < 0.75 * start, (best, start)


__all__ = [
    "OptimizerContract",
    "assert_continue_alike",
    "assert_json_and_arrays_only",
    "sphere",
    "through_a_checkpoint",
]
