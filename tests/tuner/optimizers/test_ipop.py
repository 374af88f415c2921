"""IPOP-CMA-ES (``ipop``): the shipped contract, plain CMA-ES until the first restart, a
restart doubles the population from the incumbent, and the tuner keeps the budget a hard
cap while the population grows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.server.mock import MockBackend
from bbt.testing.contracts import OptimizerContract
from bbt.testing.contracts.optimizer import assert_continue_alike, sphere, through_a_checkpoint
from bbt.tuner import Example, GenerationRecord, Task, Tuner, read_manifest, resume, tune
from bbt.tuner.optimizers import IPOPOptimizer, OptimizerSpec, make, register

from ..conftest import H, small_config

Split = tuple[list[Example], list[Example]]
SPEC = OptimizerSpec(dim=12, popsize=6, sigma=0.5, sampler_seed=1234567)


class TestIPOP(OptimizerContract):
    name = "ipop"


class TestIPOPRestartingOften(OptimizerContract):
    """The contract again with a restart every third generation (resume across restarts)."""

    @pytest.fixture
    def factory(self) -> type[IPOPOptimizer]:
        return lambda spec: IPOPOptimizer(spec, stall_generations=1)  # type: ignore[return-value]


def test_until_a_restart_it_asks_what_cma_asks() -> None:
    ipop, cma = make("ipop", SPEC), make("cma", SPEC)
    for _ in range(5):
        a, b = ipop.ask(), cma.ask()
        np.testing.assert_array_equal(a, b)
        ipop.tell(sphere(a))
        cma.tell(sphere(b))
    assert isinstance(ipop, IPOPOptimizer)
    assert ipop.restarts == 0


def test_a_stalled_run_restarts_from_the_incumbent_with_twice_the_population() -> None:
    opt = IPOPOptimizer(SPEC, stall_generations=2)
    first = opt.ask()
    losses = sphere(first)
    best = first[int(np.argmin(losses))].copy()
    opt.tell(losses)
    for _ in range(2):  # nothing better than the first generation: a stall of 2
        opt.ask()
        opt.tell(np.full(opt.popsize, 1e9))
    assert opt.restarts == 1
    assert opt.popsize == 2 * SPEC.popsize
    np.testing.assert_array_equal(opt.mean(), best)
    assert opt.sigma == SPEC.sigma
    assert opt.ask().shape == (2 * SPEC.popsize, SPEC.dim)
    # The state carries the restart: a copy continues alike with the larger population.
    copy = IPOPOptimizer(SPEC, stall_generations=2)
    opt.tell(sphere(opt.ask()))
    copy.load_state_dict(through_a_checkpoint(opt.state_dict()))
    assert copy.popsize == opt.popsize
    assert copy.restarts == 1
    assert_continue_alike(opt, copy)


def test_the_tuner_keeps_the_budget_as_the_population_grows(mock_task: Task, split: Split) -> None:
    register("ipop-test-fast", lambda spec: IPOPOptimizer(spec, stall_generations=1))
    history: list[GenerationRecord] = []
    cfg = small_config(optimizer="ipop-test-fast", budget=100, eval_every=1000)
    tuner = Tuner(
        LocalClient(MockBackend(hidden_size=H)), mock_task, *split, cfg, callbacks=[history.append]
    )
    tuner.run()
    opt = tuner.optimizer
    assert isinstance(opt, IPOPOptimizer)
    assert opt.restarts >= 2
    sizes = np.diff([0] + [r.calls for r in history]).tolist()
    assert sizes[0] == 8
    assert max(sizes) > 8  # the population grew
    assert tuner.calls <= 100
    assert tuner.calls + opt.popsize > 100  # it stopped because the next one does not fit
    assert tuner.stop_reason == "budget"


def test_pyproject_names_it_as_an_entry_point() -> None:
    """The shared install predates the entry point: read it from pyproject.toml and load it."""
    from importlib import metadata

    import tomllib

    root = Path(__file__).resolve().parents[3]
    eps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]
    value = eps["bbt.optimizers"]["ipop"]
    loaded = metadata.EntryPoint("ipop", value, "bbt.optimizers").load()
    assert loaded == IPOPOptimizer.from_spec
    assert isinstance(loaded(SPEC), IPOPOptimizer)


def test_a_run_with_restarts_resumes_from_its_run_directory(
    mock_task: Task, split: Split, tmp_path: Path
) -> None:
    register("ipop-test-fast", lambda spec: IPOPOptimizer(spec, stall_generations=1))
    cfg = small_config(optimizer="ipop-test-fast", budget=120)
    svc = LocalClient(MockBackend(hidden_size=H))
    full = tune(svc, mock_task, *split, cfg, run_dir=tmp_path / "full", plot=False)
    assert read_manifest(tmp_path / "full")["config"]["optimizer"] == "ipop-test-fast"

    def cut(rec: GenerationRecord) -> None:
        if rec.generation >= 3:  # after a restart (stall 1 restarts at the first stall)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(svc, mock_task, *split, cfg, run_dir=tmp_path / "cut", callbacks=[cut])
    res = resume(tmp_path / "cut", svc, plot=False)
    assert res.z.tobytes() == full.z.tobytes()
    assert res.calls == full.calls
