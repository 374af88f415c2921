"""The pure ask/tell optimiser: private randomness, thread safety, exact continuation."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.server.mock import MockBackend
from bbt.testing.contracts.optimizer import assert_continue_alike
from bbt.tuner import Example, Task, TuneConfig, Tuner
from bbt.tuner.optimizer import CMAOptimizer, cma_seed, import_cma

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]

# The sampling functions of NumPy's global RNG, and its state accessors.
GLOBAL_RNG = ("get_state", "set_state", "seed", "rand", "randn", "randint", "random", "uniform")


@pytest.fixture
def no_global_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any use of NumPy's global RNG fails the test."""

    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("NumPy's global RNG was used")

    for name in GLOBAL_RNG:
        monkeypatch.setattr(np.random, name, forbidden)


def _sphere(pop: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.asarray((pop**2).sum(axis=1), dtype=np.float64)


@pytest.mark.parametrize("dim", [20, 320])  # 320: pycma's TPA step-size rule (d >= 300)
def test_a_run_never_touches_the_global_rng(no_global_rng: None, dim: int) -> None:
    opt = CMAOptimizer(dim, 8, 1.0, seed=5, bound=3.0)
    for _ in range(8):  # TPA's consistency check runs from the 4th tell on
        opt.tell(_sphere(opt.ask()))
    opt.stop()
    opt.mean()


def test_a_tuner_run_never_touches_the_global_rng(
    no_global_rng: None, service: LocalClient, mock_task: Task, split: Split
) -> None:
    # (The Tuner before the split swapped its own state in and out: get_state/set_state.)
    cfg = small_config(dim=320, budget=64, eval_every=32, bound=2.0, eval_mean=True)
    Tuner(service, mock_task, *split, cfg).run()


def test_tuner_run_leaves_the_global_rng_state_as_it_was(
    service: LocalClient, mock_task: Task, split: Split
) -> None:
    np.random.seed(1234)
    expected = np.random.random(3)
    np.random.seed(1234)
    tuner = Tuner(service, mock_task, *split, small_config(dim=320, budget=64, eval_every=32))
    tuner.run()
    assert tuner.generation == 8
    np.testing.assert_array_equal(np.random.random(3), expected)


def test_ask_is_stable_until_tell_and_tell_checks_its_input() -> None:
    opt = CMAOptimizer(6, 5, 0.5, seed=1)
    pop = opt.ask()
    assert pop.shape == (5, 6)
    assert pop.dtype == np.float64
    assert opt.ask() is pop
    assert opt.pending is pop
    with pytest.raises(ValueError, match="5 numbers"):
        opt.tell([1.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        opt.tell([1.0, 2.0, float("nan"), 0.0, 1.0])
    opt.tell(_sphere(pop))
    assert opt.pending is None
    with pytest.raises(RuntimeError, match="without a pending ask"):
        opt.tell(_sphere(pop))
    assert not np.array_equal(opt.ask(), pop)


def test_same_seed_same_stream_other_seed_other_stream() -> None:
    a, b, c = (CMAOptimizer(10, 6, 1.0, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.ask(), b.ask())
    assert not np.array_equal(a.ask(), c.ask())
    assert cma_seed(3) != cma_seed(4)


@pytest.mark.parametrize("dim", [12, 320])
def test_from_blob_continues_bit_for_bit(dim: int) -> None:
    ref = CMAOptimizer(dim, 6, 1.0, seed=9)
    for _ in range(5):
        ref.tell(_sphere(ref.ask()))
    copy = CMAOptimizer.from_blob(ref.blob)
    assert_continue_alike(ref, copy, _sphere)


def test_a_strategy_pickled_by_older_bbt_stops_using_the_global_rng(no_global_rng: None) -> None:
    """Checkpoints made before the split hold pycma's own TPA class, whose tell() draws from
    the global RNG: loading one swaps in the quiet class, and the stream is unchanged."""
    cma = import_cma()
    opts = {"popsize": 6, "randn": np.random.RandomState(7).randn, "seed": float("nan")}
    opts |= {"verbose": -9, "verb_log": 0, "verb_disp": 0}
    es = cma.CMAEvolutionStrategy(np.zeros(320), 1.0, inopts=opts)
    assert type(es.adapt_sigma) is cma.sigma_adaptation.CMAAdaptSigmaTPA
    blob = pickle.dumps(es)
    opt = CMAOptimizer.from_blob(blob)
    assert type(opt.es.adapt_sigma).__name__ == "_TPA"
    assert isinstance(opt.es.adapt_sigma, cma.sigma_adaptation.CMAAdaptSigmaTPA)
    plain = pickle.loads(blob)
    for _ in range(6):
        pop = opt.ask()
        np.testing.assert_array_equal(pop, np.asarray(plain.ask()))
        opt.tell(_sphere(pop))
        plain.adapt_sigma.check_consistency = lambda es: None  # keep the fixture's RNG ban
        plain.tell(list(pop), _sphere(pop).tolist())
    # The quiet class pickles by reference and loads back as itself.
    again = pickle.loads(opt.blob)
    assert type(again.adapt_sigma) is type(opt.es.adapt_sigma)


def _run(split: Split, task: Task, cfg: TuneConfig) -> tuple[list[dict[str, Any]], bytes]:
    history: list[dict[str, Any]] = []

    def record(rec: Any) -> None:
        history.append({k: v for k, v in rec.as_dict().items() if k != "wall_time"})

    tuner = Tuner(LocalClient(MockBackend(hidden_size=H)), task, *split, cfg, callbacks=[record])
    sel = tuner.run()
    return history, np.asarray(sel.z, dtype=np.float64).tobytes()


def test_two_tuners_in_two_threads_match_running_them_one_after_the_other(
    mock_task: Task, split: Split
) -> None:
    configs = [
        small_config(budget=96, eval_every=32),
        small_config(dim=320, budget=64, eval_every=32, seed=11, bound=2.0, eval_mean=True),
    ]
    sequential = [_run(split, mock_task, cfg) for cfg in configs]
    np.random.seed(99)
    before = np.random.get_state()[1].copy()
    results: list[Any] = [None, None]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            start.wait()
            results[i] = _run(split, mock_task, configs[i])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert results == sequential
    np.testing.assert_array_equal(np.random.get_state()[1], before)
