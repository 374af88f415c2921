"""The optimiser protocol and registry: every bbt optimiser passes the shipped
OptimizerContract, names are looked up in code and through the ``bbt.optimizers`` entry
points, an unknown name is one clear line."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.server.mock import MockBackend
from bbt.testing.contracts import OptimizerContract
from bbt.testing.contracts.optimizer import sphere
from bbt.tuner import Example, Task, TuneConfig, read_manifest, resume, tune
from bbt.tuner.optimizers import (
    ENTRY_POINT_GROUP,
    LayerwiseOptimizer,
    OptimizerFactory,
    OptimizerSpec,
    available,
    base,
    get,
    make,
    refresh,
)

from ..conftest import H, small_config

Split = tuple[list[Example], list[Example]]


def _layerwise(spec: OptimizerSpec) -> LayerwiseOptimizer:
    layers = [
        make("cma", OptimizerSpec(spec.dim, spec.popsize, spec.sigma, s, spec.bound))
        for s in (spec.sampler_seed, spec.sampler_seed + 2, spec.sampler_seed + 4)
    ]
    return LayerwiseOptimizer(layers, layer_generations=2)


class _BbtOptimizer(OptimizerContract):
    """The shipped contract, and what bbt's own optimisers promise beyond it (the same
    array back from a second ``ask``, non-finite losses refused, their error wording)."""

    spec = OptimizerSpec(dim=12, popsize=6, sigma=0.5, sampler_seed=1234567, bound=None)

    def test_bbt_specifics(self, factory: OptimizerFactory) -> None:
        opt = factory(self.spec)
        pop = opt.ask()
        assert opt.ask() is pop  # stable until tell
        assert opt.pending is pop
        with pytest.raises(ValueError, match="one per candidate"):
            opt.tell([1.0] * (self.spec.popsize - 1))
        with pytest.raises(ValueError, match="finite"):
            opt.tell([float("nan")] * self.spec.popsize)
        opt.tell(sphere(pop))
        with pytest.raises(RuntimeError, match="without a pending ask"):
            opt.tell(sphere(pop))
        assert opt.sigma > 0
        assert opt.stop() == {}
        with pytest.raises(ValueError, match="not a"):
            factory(self.spec).load_state_dict({"format": "something-else/1"})


class TestCMA(_BbtOptimizer):
    name = "cma"


class TestSepCMA(_BbtOptimizer):
    name = "sepcma"


class TestLayerwise(_BbtOptimizer):
    """BBTv2's schedule over three CMA-ES layers, two generations a turn."""

    @pytest.fixture
    def factory(self) -> OptimizerFactory:
        return _layerwise

    def expected_dim(self, spec: OptimizerSpec) -> int:
        return 3 * spec.dim


def test_bbt_registers_its_optimisers_in_code_and_as_entry_points() -> None:
    assert {"cma", "sepcma"} <= set(available())
    from importlib import metadata

    names = {ep.name for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
    if names:  # installed (the checkout's metadata may predate the entry points)
        assert {"cma", "sepcma"} <= names


def test_an_unknown_optimizer_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        get("nope")
    assert str(info.value) == f"unknown optimizer 'nope'; available: {', '.join(available())}"
    with pytest.raises(ConfigurationError, match=r"unknown optimizer 'nope'; available: .*cma"):
        TuneConfig(optimizer="nope")


def test_cli_unknown_optimizer_is_one_line_and_no_traceback(tmp_path: Path) -> None:
    from bbt.cli import app

    r = CliRunner().invoke(
        app,
        ["tune", "--task", "mock", "--mock", "--optimizer", "nope", "--out", str(tmp_path / "r")],
    )
    assert r.exit_code != 0
    assert "unknown optimizer 'nope'; available:" in r.output
    assert "sepcma" in r.output
    assert "Traceback" not in r.output


# --------------------------------------------------------------------------- entry points

PLUGIN = '''
"""A third-party optimiser: random search around the best point, its own Generator."""
import numpy as np


class HillClimber:
    def __init__(self, spec):
        self._dim, self._popsize, self._bound = spec.dim, spec.popsize, spec.bound
        self._rng = np.random.default_rng(spec.sampler_seed)
        self._best = np.zeros(spec.dim)
        self._best_loss = float("inf")
        self._sigma = float(spec.sigma)
        self._pending = None

    dim = property(lambda self: self._dim)
    popsize = property(lambda self: self._popsize)
    sigma = property(lambda self: self._sigma)
    pending = property(lambda self: self._pending)

    def mean(self):
        return self._best.copy()

    def stop(self):
        return {}

    def ask(self):
        if self._pending is None:
            step = self._rng.standard_normal((self._popsize, self._dim)) * self._sigma
            pop = self._best + step
            if self._bound is not None:
                pop = np.clip(pop, -self._bound, self._bound)
            self._pending = pop
        return self._pending

    def tell(self, losses):
        losses = np.asarray(losses, dtype=np.float64)
        i = int(np.argmin(losses))
        if losses[i] < self._best_loss:
            self._best, self._best_loss = self._pending[i].copy(), float(losses[i])
        else:
            self._sigma *= 0.8
        self._pending = None

    def state_dict(self):
        return {"best": self._best.copy(), "best_loss": self._best_loss, "sigma": self._sigma,
                "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state):
        self._best = np.array(state["best"], dtype=np.float64)
        self._best_loss = float(state["best_loss"])
        self._sigma = float(state["sigma"])
        self._rng.bit_generator.state = state["rng"]
        self._pending = None
'''


@pytest.fixture
def hill_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An installed distribution (a dist-info on sys.path) whose entry point names a module
    that bbt has never heard of."""
    site = tmp_path / "site"
    (site / "hillopt_dist-1.0.dist-info").mkdir(parents=True)
    (site / "hillopt_dist-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: hillopt-dist\nVersion: 1.0\n"
    )
    (site / "hillopt_dist-1.0.dist-info" / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nhill = bbt_test_hillopt:HillClimber\n"
    )
    (site / "bbt_test_hillopt.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(base, "_REGISTRY", dict(base._REGISTRY))
    refresh()
    yield "hill"
    refresh()
    sys.modules.pop("bbt_test_hillopt", None)


def _svc() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=H))


def test_an_entry_point_optimizer_tunes_and_resumes(
    hill_plugin: str, tmp_path: Path, mock_task: Task, split: Split
) -> None:
    assert hill_plugin in available()
    cfg = small_config(optimizer=hill_plugin, budget=120)
    full = tune(_svc(), mock_task, *split, cfg, run_dir=tmp_path / "full", plot=False)
    assert read_manifest(tmp_path / "full")["config"]["optimizer"] == hill_plugin
    assert full.train_loss is not None
    history = [json.loads(x) for x in (tmp_path / "full/history.jsonl").read_text().splitlines()]
    assert history[-1]["best_loss"] < history[0]["loss_mean"]  # it learned something

    def stop(rec: Any) -> None:
        if rec.generation >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(_svc(), mock_task, *split, cfg, run_dir=tmp_path / "cut", callbacks=[stop])
    res = resume(tmp_path / "cut", _svc(), plot=False)  # the recorded optimizer is used
    assert res.z.tobytes() == full.z.tobytes()


def test_a_plugin_that_fails_to_import_is_one_clear_error(hill_plugin: str, tmp_path: Path) -> None:
    (tmp_path / "site" / "bbt_test_hillopt.py").write_text("raise ImportError('no numpy here')\n")
    with pytest.raises(ConfigurationError, match=r"the optimizer 'hill' \(.*\) failed to load"):
        get(hill_plugin)
