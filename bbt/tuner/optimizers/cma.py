"""CMA-ES (optimiser ``cma``) as a pure ask/tell optimiser over z in R^d: no I/O, no global state.

:class:`CMAOptimizer` wraps pycma's ``CMAEvolutionStrategy`` (Hansen, 2016) so that a run is
a function of its seed alone and two optimisers can run in two threads of one process.

Where pycma draws random numbers (pycma 4.x, read from its source):

- every sample (``ask``, the mirrored samples of TPA, the rescaling of injected solutions)
  goes through the ``randn`` option. We pass the ``randn`` of a private, seeded
  ``numpy.random.RandomState``; it is saved with the strategy (by value), so a checkpoint
  holds the exact sampling stream.
- ``seed`` seeds NumPy's *global* RNG, but only when ``randn`` is ``np.random.randn``;
  we set it to NaN ("do nothing").
- ``CMAAdaptSigmaTPA.check_consistency``, called by every ``tell`` once the dimension
  reaches ``cma.evolution_strategy.TPA_dimension`` (300; the paper's d = 500 is above it),
  draws two indices from the *global* RNG to spot-check the mirrored samples and at most
  warns. It changes nothing in the strategy; :func:`_tpa` below skips it. That is the only
  path of the strategy's default configuration that touches the global RNG.
- the rest (integer variables, restarts in ``cma.fmin``, fitness transformations, the
  logger's plots) is not used here.

pycma reports conditions such as flat fitness as Python warnings, and the warnings filter is
process-wide; every pycma call therefore runs under one module-level lock with warnings
ignored, so concurrent optimisers never undo each other's filter changes.

A restored CMA-ES object does not always continue bit-for-bit like the object it was saved
from (internal caches are rebuilt differently). So after every ``tell`` the optimiser
encodes the strategy with :mod:`bbt.tuner.optimizers.codec` (JSON + arrays, no pickle: what
:meth:`CMAOptimizer.state_dict` returns) and continues with the copy decoded from it: an
uninterrupted run and a resumed run execute identical code on identical state. The codec
rebuilds the object graph exactly as pickle did before it (bbt up to f05a715 continued from
a pickle round trip), so the trajectories, and the recorded goldens, are unchanged.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, ClassVar

import numpy as np

from bbt.tuner.optimizers import codec
from bbt.tuner.optimizers.base import OptimizerSpec, checked_losses, register

F64 = np.ndarray[Any, np.dtype[np.float64]]

#: The ``format`` of :meth:`CMAOptimizer.state_dict`.
STATE_FORMAT = "bbt-cma/1"

# One lock for every pycma call in the process: warnings.catch_warnings() saves and restores
# the process-wide filter list, which two threads doing it at once would scramble.
# Reentrant: the lazily built TPA class is made under it, also from inside a pycma call.
_PYCMA_LOCK = threading.RLock()
_TPA_CLASS: type | None = None


def import_cma() -> Any:
    """pycma, imported lazily; it warns when matplotlib (only needed for its own plots) is
    missing, which says nothing about tuning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*matplotlib.*")
        import cma
    return cma


def cma_seed(seed: int) -> int:
    """A 32-bit seed for CMA-ES's sampler, decorrelated from the projection's PCG64(seed)."""
    return int(np.random.SeedSequence([seed, 0xC3A]).generate_state(1, dtype=np.uint32)[0]) | 1


def _tpa() -> type:
    """pycma's two-point step-size adaptation (TPA) without its global-RNG consistency check
    (see the module docstring): the check draws from ``np.random`` and can only warn.

    Built on first use so that importing bbt does not import pycma. It is found by name as
    ``bbt.tuner.optimizers.cma:_TPA`` (the codec's allow-list) and, in pickles of older bbt,
    as ``bbt.tuner.optimizer._TPA`` (the modules' ``__getattr__``).
    """
    global _TPA_CLASS
    with _PYCMA_LOCK:  # one class per process, or saving an instance of a twin would fail
        if _TPA_CLASS is None:
            base: type = import_cma().sigma_adaptation.CMAAdaptSigmaTPA

            def check_consistency(self: Any, es: Any) -> None:
                return None

            attrs = {"check_consistency": check_consistency, "__module__": __name__}
            _TPA_CLASS = type("_TPA", (base,), attrs)
            _TPA_CLASS.__qualname__ = "_TPA"
        return _TPA_CLASS


codec.allow(f"{__name__}:_TPA", _tpa)
codec.allow("bbt.tuner.optimizer:_TPA", _tpa)  # its name in bbt up to f05a715


def __getattr__(name: str) -> Any:
    if name == "_TPA":
        return _tpa()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@contextmanager
def _pycma() -> Iterator[None]:
    """Run pycma code: serialised process-wide, its warnings ignored (the tuner records stop
    reasons instead, and warnings must not turn into errors under ``-W error``)."""
    with _PYCMA_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


#: The context every pycma call runs in (for code outside this module, such as the legacy
#: reader's unpickling of strategies).
pycma_context = _pycma


def quiet_tpa(es: Any) -> Any:
    """Give a strategy of an older checkpoint (pycma's own TPA class) the TPA without the
    global-RNG check. Its state is the same object; only the class changes."""
    cma = import_cma()
    if type(es.adapt_sigma) is cma.sigma_adaptation.CMAAdaptSigmaTPA:
        es.adapt_sigma.__class__ = _tpa()
    return es


def new_strategy(
    dim: int,
    popsize: int,
    sigma: float,
    randn_seed: int,
    bound: float | None = None,
    options: Mapping[str, Any] | None = None,
    x0: F64 | None = None,
) -> Any:
    """A fresh pycma strategy at z = 0 (or ``x0``) whose randomness all comes from a private
    RandomState seeded with ``randn_seed`` (it is saved with the strategy). ``options`` are
    more pycma options (sep-CMA's ``CMA_diagonal``)."""
    cma = import_cma()
    opts: dict[str, Any] = {
        "popsize": popsize,
        # `seed` would only seed NumPy's global RNG, which is never used: NaN.
        "randn": np.random.RandomState(randn_seed).randn,
        "seed": float("nan"),
        "verbose": -9,
        "verb_log": 0,
        "verb_disp": 0,
        # The budget is the tuner's; pycma's own evaluation limits must never cut in first.
        "maxfevals": float("inf"),
        "maxiter": float("inf"),
    }
    if dim >= cma.evolution_strategy.TPA_dimension:
        # What AdaptSigma=True picks at this dimension, minus the global-RNG check.
        opts["AdaptSigma"] = _tpa()
    if bound is not None:
        opts["bounds"] = [-bound, bound]
    opts.update(options or {})
    with _pycma():
        start = np.zeros(dim) if x0 is None else np.array(x0, dtype=np.float64)
        return cma.CMAEvolutionStrategy(start, sigma, inopts=opts)


class CMAOptimizer:
    """CMA-ES over z in R^d with an ask/tell interface; no I/O, no global RNG.

    ``ask()`` returns the population ``[P, d]`` (float64; asked again before ``tell`` it
    returns the same one), ``tell(losses)`` takes one finite loss per candidate of that
    population (lower is better). The start is z = 0 with step size ``sigma``; with
    ``bound`` every coordinate stays within [-bound, bound] (pycma's boundary handling).
    ``sampler_seed`` overrides the sampler's seed (default :func:`cma_seed` of ``seed``).

    :meth:`state_dict` is the whole state (the RNG stream included) between generations,
    as JSON-able data and arrays; :meth:`load_state_dict` continues from it bit for bit.
    """

    #: More pycma options of this variant (see :mod:`bbt.tuner.optimizers.sepcma`).
    OPTIONS: ClassVar[Mapping[str, Any]] = {}

    def __init__(
        self,
        dim: int,
        popsize: int,
        sigma: float,
        seed: int,
        bound: float | None = None,
        *,
        sampler_seed: int | None = None,
    ) -> None:
        randn_seed = cma_seed(seed) if sampler_seed is None else sampler_seed
        es = new_strategy(dim, popsize, sigma, randn_seed, bound, self.OPTIONS)
        self._bound = bound
        self._pending: F64 | None = None
        self._continue_from(es)

    @classmethod
    def from_spec(cls, spec: OptimizerSpec) -> CMAOptimizer:
        """The registry's factory."""
        return cls(
            spec.dim, spec.popsize, spec.sigma, 0, spec.bound, sampler_seed=spec.sampler_seed
        )

    @classmethod
    def from_strategy(cls, es: Any, bound: float | None = None) -> CMAOptimizer:
        """The optimiser that continues pycma strategy ``es`` (no pending population)."""
        self = cls.__new__(cls)
        self._bound = bound
        self._pending = None
        self._continue_from(quiet_tpa(es))
        return self

    def _continue_from(self, es: Any) -> None:
        """Save ``es`` as :meth:`state_dict` and go on with the copy decoded from it (see
        the module docstring)."""
        with _pycma():
            self._tree, self._arrays = codec.encode(es)
            self._es = quiet_tpa(codec.decode(self._tree, self._arrays))

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """The strategy as of the last ``tell`` (or the start): JSON-able data and arrays."""
        if self._pending is not None:
            raise RuntimeError("state_dict() between generations only (after tell())")
        return {"format": STATE_FORMAT, "tree": self._tree, "arrays": dict(self._arrays)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (of this class, or of any CMA-ES variant)."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a CMA-ES state (format {got!r})")
        tree, arrays = state["tree"], dict(state["arrays"])
        with _pycma():
            es = quiet_tpa(codec.decode(tree, arrays))
        self._tree, self._arrays, self._es = tree, arrays, es
        self._pending = None

    @property
    def es(self) -> Any:
        """The live pycma strategy (read it; changing it breaks resume)."""
        return self._es

    @property
    def dim(self) -> int:
        return int(self._es.N)

    @property
    def popsize(self) -> int:
        return int(self._es.sp.popsize)

    @property
    def sigma(self) -> float:
        return float(self._es.sigma)

    @property
    def pending(self) -> F64 | None:
        """The population asked and not told yet."""
        return self._pending

    def mean(self) -> F64:
        """The distribution's mean as a candidate z (within the bounds, when there are)."""
        es = self._es
        if self._bound is None:
            return np.array(es.mean, dtype=np.float64)
        with _pycma():
            pheno = es.gp.pheno(es.mean, into_bounds=es.boundary_handler.repair)
        return np.array(pheno, dtype=np.float64)

    def stop(self) -> dict[str, Any]:
        """pycma's termination conditions that hold now (empty while it goes on)."""
        with _pycma():
            stops = dict(self._es.stop())
        stops.pop("maxiter", None)
        return stops

    # ------------------------------------------------------------------ ask / tell

    def ask(self) -> F64:
        """The next population, [P, d] (float64)."""
        if self._pending is None:
            with _pycma():
                sols = self._es.ask()
            self._pending = np.asarray(sols, dtype=np.float64)
        return self._pending

    def tell(self, losses: Sequence[float] | F64) -> None:
        """The losses of the pending population, one finite number per candidate."""
        pop, values = checked_losses(self._pending, losses)
        with _pycma():
            self._es.tell(list(pop), values.tolist())
        self._pending = None
        self._continue_from(self._es)  # see the module docstring


class AroundCMA:
    """The part of the protocol an optimiser built around one inner CMA-ES run
    (``_inner``, under ``_spec``) takes from it: the spec's dimension, the run's population,
    step size and mean. IPOP restarts that run; the GP surrogate filters its candidates."""

    _spec: OptimizerSpec
    _inner: CMAOptimizer

    @property
    def dim(self) -> int:
        return self._spec.dim

    @property
    def popsize(self) -> int:
        return self._inner.popsize

    @property
    def sigma(self) -> float:
        return self._inner.sigma

    def mean(self) -> F64:
        return self._inner.mean()


register("cma", CMAOptimizer.from_spec)
