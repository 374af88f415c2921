"""The GP-assisted CMA-ES (``gp``): the shipped contract, CMA-ES until the archive is big
enough, candidates pre-selected by the surrogate after, one clear line without
scikit-learn, and a tuner run that resumes bit for bit."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.server.mock import MockBackend
from bbt.testing.contracts import OptimizerContract
from bbt.testing.contracts.optimizer import sphere
from bbt.tuner import Example, GenerationRecord, Task, Tuner
from bbt.tuner.optimizers import GPOptimizer, OptimizerSpec, make

from ..conftest import H, small_config

pytest.importorskip("sklearn")

Split = tuple[list[Example], list[Example]]
SPEC = OptimizerSpec(dim=12, popsize=6, sigma=0.5, sampler_seed=1234567)


class TestGP(OptimizerContract):
    name = "gp"


class TestGPBounded(OptimizerContract):
    """The contract with a bound on z (the pool's extra samples are clipped)."""

    name = "gp"
    spec = OptimizerSpec(dim=8, popsize=5, sigma=0.3, sampler_seed=99, bound=1.0)


def test_it_is_cma_until_the_archive_holds_two_generations_then_the_gp_chooses() -> None:
    gp, cma = make("gp", SPEC), make("cma", SPEC)
    assert isinstance(gp, GPOptimizer)
    for _ in range(2):
        a, b = gp.ask(), cma.ask()
        np.testing.assert_array_equal(a, b)
        gp.tell(sphere(a))
        cma.tell(sphere(b))
    assert gp.surrogate_generations == 0
    differs = 0
    for _ in range(6):
        pop = gp.ask()
        assert pop.shape == (SPEC.popsize, SPEC.dim)
        differs += not np.array_equal(pop, cma.ask())
        gp.tell(sphere(pop))
        cma.tell(sphere(cma.ask()))
    assert gp.surrogate_generations == 6
    assert differs >= 1  # the surrogate picked pool members CMA-ES did not sample


def test_without_scikit_learn_it_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ConfigurationError, match=r"needs scikit-learn: pip install 'bbt\[gp\]'"):
        make("gp", SPEC)


def test_a_tuner_with_gp_resumes_bit_for_bit(mock_task: Task, split: Split) -> None:
    cfg = small_config(optimizer="gp", budget=96, eval_every=32)
    service = LocalClient(MockBackend(hidden_size=H))
    ref_hist: list[GenerationRecord] = []
    ref = Tuner(service, mock_task, *split, cfg, callbacks=[ref_hist.append])
    ref.run()
    assert isinstance(ref.optimizer, GPOptimizer)
    assert ref.optimizer.surrogate_generations > 0
    first: list[GenerationRecord] = []
    part = Tuner(service, mock_task, *split, cfg, callbacks=[first.append])
    part.start()
    for _ in range(5):
        part.step()
    state = part.state_dict()
    rest: list[GenerationRecord] = []
    resumed = Tuner(service, mock_task, *split, cfg, callbacks=[rest.append])
    resumed.load_state_dict(state)
    resumed.run()
    assert [r.loss_min for r in first + rest] == [r.loss_min for r in ref_hist]
    assert resumed.calls == ref.calls
    np.testing.assert_array_equal(resumed.optimizer.mean(), ref.optimizer.mean())


def test_pyproject_names_it_as_an_entry_point() -> None:
    """The shared install predates the entry point: read it from pyproject.toml and load it."""
    from importlib import metadata
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[3]
    eps = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"]
    value = eps["bbt.optimizers"]["gp"]
    loaded = metadata.EntryPoint("gp", value, "bbt.optimizers").load()
    assert loaded == GPOptimizer.from_spec
    assert isinstance(loaded(SPEC), GPOptimizer)
