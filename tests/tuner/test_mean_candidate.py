"""``TuneConfig.eval_mean``: the CMA-ES mean as a dev candidate, on the mock backend."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.server.mock import MockBackend
from bbt.tuner import Example, GenerationRecord, Task, TuneConfig, Tuner, read_manifest, resume
from bbt.tuner import tune as tune_run
from bbt.tuner.run import HISTORY

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]
BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _tuner(split: Split, task: Task, **kw: Any) -> tuple[Tuner, list[GenerationRecord]]:
    train, dev = split
    records: list[GenerationRecord] = []
    cfg = small_config(**kw)
    return Tuner(
        LocalClient(MockBackend(hidden_size=H)), task, train, dev, cfg, callbacks=[records.append]
    ), records


def test_the_mean_is_scored_at_every_dev_check_and_at_the_end(
    mock_task: Task, split: Split
) -> None:
    # 8 per generation, checks at 40, 80, 120; the run ends at 144 calls, off a check.
    tuner, records = _tuner(split, mock_task, budget=150, eval_every=40, eval_mean=True)
    tuner.run()
    assert tuner.calls == 144
    checks = [r for r in records if r.mean_dev_metric is not None]
    assert [r.calls for r in checks] == [40, 80, 120]
    assert all(r.mean_dev_ce is not None and r.selected is not None for r in checks)
    assert all(r.mean_dev_metric is None for r in records if r not in checks)
    # The end of the run scored the mean of the last generation: pycma's `mean`.
    last = tuner.last_mean
    assert last is not None
    assert last.calls == 144
    assert last.source == "mean"
    assert np.array_equal(last.z, np.asarray(tuner.optimizer.es.mean))
    # dev calls: p0, each new best-by-train candidate, and the mean at 3 checks + the end.
    best_scores = sum(r.dev_metric is not None for r in records)
    end_best = 0 if tuner.best is None or tuner.best.calls <= 120 else 1
    assert tuner.dev_calls == 1 + best_scores + end_best + 3 + 1


def test_dev_calls_without_eval_mean_are_unchanged_and_with_it_one_more_per_check(
    mock_task: Task, split: Split
) -> None:
    off, rec_off = _tuner(split, mock_task, budget=160, eval_every=40, eval_mean=False)
    on, rec_on = _tuner(split, mock_task, budget=160, eval_every=40, eval_mean=True)
    off.run()
    on.run()
    # Dev scoring never feeds back into CMA-ES: the same trajectory, the same best scores.
    assert [r.loss_min for r in rec_off] == [r.loss_min for r in rec_on]
    assert [r.dev_metric for r in rec_off] == [r.dev_metric for r in rec_on]
    assert all(r.mean_dev_metric is None for r in rec_off)
    # 4 checks (40, 80, 120, 160 = the end): one mean each, nothing more at the end.
    assert on.dev_calls == off.dev_calls + 4
    assert off.last_mean is None


class _FakeDev:
    """Dev scores by call order: a constant metric and a cross-entropy given by ``ce``."""

    def __init__(self, ce: Any) -> None:
        self.ce = ce
        self.calls = 0

    def __call__(self, z: np.ndarray[Any, Any]) -> tuple[float, float]:
        self.calls += 1
        return 0.5, float(self.ce(self.calls))


def _with_fake_dev(tuner: Tuner, fake: _FakeDev) -> None:
    original = tuner.evaluate_dev

    def scored(z: np.ndarray[Any, Any]) -> tuple[float, float]:
        original(z)  # keeps the tuner's own dev-call accounting
        return fake(z)

    tuner.evaluate_dev = scored  # type: ignore[method-assign]


def test_selection_can_pick_the_mean_and_the_earlier_wins_a_tie(
    mock_task: Task, split: Split
) -> None:
    # Each later dev score has a lower cross-entropy at the same metric: the last candidate
    # scored wins, and at a check the mean is scored after the best.
    tuner, records = _tuner(split, mock_task, budget=160, eval_every=40, eval_mean=True)
    _with_fake_dev(tuner, _FakeDev(lambda k: 10.0 - k))
    sel = tuner.run()
    assert sel.source == "mean"
    assert tuner.last_mean is not None
    assert np.array_equal(sel.z, tuner.last_mean.z)
    assert sel.calls == 160
    assert [r.selected for r in records if r.mean_dev_metric is not None] == ["mean"] * 4

    # Without eval_mean the same scores select the best-by-train candidate.
    tuner, records = _tuner(split, mock_task, budget=160, eval_every=40, eval_mean=False)
    _with_fake_dev(tuner, _FakeDev(lambda k: 10.0 - k))
    sel = tuner.run()
    assert sel.source == "best"
    assert tuner.best is not None
    assert np.array_equal(sel.z, tuner.best.z)

    # A full tie everywhere: p0, scored first, stays.
    tuner, records = _tuner(split, mock_task, budget=160, eval_every=40, eval_mean=True)
    _with_fake_dev(tuner, _FakeDev(lambda k: 1.0))
    sel = tuner.run()
    assert sel.calls == 0
    assert not sel.z.any()
    assert {r.selected for r in records if r.mean_dev_metric is not None} == {"initial"}


def test_the_real_selection_is_the_best_dev_score_among_best_and_mean(
    mock_task: Task, split: Split
) -> None:
    tuner, records = _tuner(split, mock_task, budget=320, eval_every=40, eval_mean=True, seed=5)
    sel = tuner.run()
    seen = [(tuner.initial_dev_metric, "initial")]
    seen += [(r.dev_metric, "best") for r in records if r.dev_metric is not None]
    seen += [(r.mean_dev_metric, "mean") for r in records if r.mean_dev_metric is not None]
    assert sel.dev_metric == max(m for m, _ in seen if m is not None)


def test_resume_with_eval_mean_is_bitwise_exact(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    train, dev = split
    cfg = small_config(budget=120, eval_every=16, eval_mean=True)
    full = tune_run(
        LocalClient(MockBackend(hidden_size=H)), mock_task, train, dev, cfg, run_dir=tmp_path / "a"
    )

    def stop_at_7(rec: GenerationRecord) -> None:
        if rec.generation >= 7:
            raise KeyboardInterrupt

    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        tune_run(
            LocalClient(MockBackend(hidden_size=H)),
            mock_task,
            train,
            dev,
            cfg,
            run_dir=run,
            callbacks=[stop_at_7],
        )
    assert read_manifest(run)["config"]["eval_mean"] is True
    res = resume(run, LocalClient(MockBackend(hidden_size=H)))
    assert res.z.tobytes() == full.z.tobytes()
    assert res.metrics == full.metrics
    assert res.dev_calls == full.dev_calls
    a = [json.loads(x) for x in (tmp_path / "a" / HISTORY).read_text().splitlines()]
    b = [json.loads(x) for x in (run / HISTORY).read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    # The history says, at each check, which candidate the selection is.
    checks = [r for r in a if r["mean_dev_metric"] is not None]
    assert checks
    assert all(r["selected"] in ("initial", "best", "mean") for r in checks)


def test_config_field_validation_and_old_manifests() -> None:
    assert TuneConfig().eval_mean is TuneConfig.__dataclass_fields__["eval_mean"].default
    assert TuneConfig(eval_mean=True).as_dict()["eval_mean"] is True
    assert TuneConfig.from_dict(TuneConfig(eval_mean=True).as_dict()).eval_mean is True
    # A config recorded before the field existed keeps the behaviour it ran with.
    old = {k: v for k, v in TuneConfig(eval_mean=True).as_dict().items() if k != "eval_mean"}
    assert TuneConfig.from_dict(old).eval_mean is False
    with pytest.raises(ConfigurationError, match="eval_mean"):
        TuneConfig(eval_mean="yes")  # type: ignore[arg-type]


def _quality_module() -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    import embedded_quality

    return embedded_quality


@pytest.mark.parametrize(
    ("seed", "budget", "eval_every"), [(0, 160, 40), (1, 150, 24), (2, 320, 16), (7, 96, 8)]
)
def test_benchmark_replay_equals_a_real_run_without_eval_mean(
    mock_task: Task, split: Split, seed: int, budget: int, eval_every: int
) -> None:
    """The quality benchmark runs once with eval_mean and replays the selection over the
    best-by-train candidates: it must be what an eval_mean=False run selects."""
    q = _quality_module()
    train, dev = split
    kw = {"budget": budget, "eval_every": eval_every, "seed": seed}
    logged = q.LoggingTuner(
        LocalClient(MockBackend(hidden_size=H)),
        mock_task,
        train,
        dev,
        small_config(eval_mean=True, **kw),
    )
    with_mean = logged.run()
    off = Tuner(
        LocalClient(MockBackend(hidden_size=H)),
        mock_task,
        train,
        dev,
        small_config(eval_mean=False, **kw),
    )
    without_mean = off.run()
    replayed = q.replay_selection(logged.dev_log, ("initial", "best"))
    assert replayed is not None
    assert replayed.z.tobytes() == without_mean.z.tobytes()
    assert replayed.dev_metric == without_mean.dev_metric
    assert replayed.calls == without_mean.calls
    # ... and the replay over every logged candidate is the eval_mean run's own selection.
    everything = q.replay_selection(logged.dev_log, ("initial", "best", "mean"))
    assert everything is not None
    assert everything.z.tobytes() == with_mean.z.tobytes()
    assert sum(d.source != "mean" for d in logged.dev_log) == off.dev_calls
    assert len(logged.dev_log) == logged.dev_calls


@pytest.mark.parametrize(("flag", "expected"), [("--eval-mean", True), ("--no-eval-mean", False)])
def test_bbt_tune_sets_eval_mean(tmp_path: Path, flag: str, expected: bool) -> None:
    from typer.testing import CliRunner

    from bbt.cli import app

    run = tmp_path / "run"
    args = ["tune", "--task", "mock", "--mock", "--mock-hidden-size", "32", "-n", "5"]
    args += ["-d", "20", "--popsize", "8", "--budget", "48", "--eval-every", "16", "-q"]
    r = CliRunner().invoke(app, [*args, "--no-plot", flag, "--out", str(run)])
    assert r.exit_code == 0, r.output
    manifest = read_manifest(run)
    assert manifest["config"]["eval_mean"] is expected
    lines = [json.loads(x) for x in (run / HISTORY).read_text().splitlines()]
    assert any(x["mean_dev_metric"] is not None for x in lines) is expected


def test_with_bounds_the_mean_candidate_lies_within_them(mock_task: Task, split: Split) -> None:
    tuner, _ = _tuner(split, mock_task, budget=160, eval_every=40, eval_mean=True, bound=0.05)
    tuner.run()
    mean = tuner.last_mean
    assert mean is not None
    assert np.abs(mean.z).max() <= 0.05
    # pycma's own mean (its genotype) has left the box: scoring it raw would be wrong.
    assert np.abs(np.asarray(tuner.optimizer.es.mean)).max() > 0.05
