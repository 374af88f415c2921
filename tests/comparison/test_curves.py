"""Held-out learning curves of the tuned methods on the mock: checkpoints of the budget,
their calls counted apart from tuning, and the plot that draws them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bbt.client import LocalClient
from bbt.comparison import CompareSettings, compare, report
from bbt.comparison.curves import checkpoints
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


def test_checkpoints_spread_over_the_budget() -> None:
    assert checkpoints(20, 4) == [0, 5, 10, 15]
    assert checkpoints(100, 3) == [0, 33, 67]
    assert checkpoints(3, 8) == [0, 1, 2]  # no duplicates
    assert checkpoints(100, 0) == []


def _run(svc: LocalClient, task: Task, rows: list[Example], points: int) -> Any:
    settings = CompareSettings(["bbt"], 1, 2, budget=20, n_test=10, n_tokens=4)
    settings.curve_points = points
    (run,) = compare(svc, task, rows, settings).runs
    return run


def test_the_curve_costs_apart_from_tuning(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    plain = _run(mock_service, task, rows, 0)
    assert not [p for p in plain.curve if p.split == "test"]
    assert plain.curve_eval.calls == 0
    with_curve = _run(LocalClient(mock_service._backend), task, rows, 4)
    held = [p for p in with_curve.curve if p.split == "test"]
    # Checkpoints at 0, 5, 10 and 15 tuning calls (taken after the first step past each),
    # then the run's own figure at the end.
    assert len(held) == 5
    assert held[0].calls == 0
    assert [p.calls >= c for p, c in zip(held, (0, 5, 10, 15), strict=False)] == [True] * 4
    assert held[-1].metric == with_curve.metric
    assert held[-1].calls == with_curve.fit.calls
    # Tuning is the same run (same seed), and costs the same: the checkpoints are apart.
    assert with_curve.metric == plain.metric
    assert (with_curve.fit.calls, with_curve.fit.input_tokens) == (
        plain.fit.calls,
        plain.fit.input_tokens,
    )
    # Each checkpoint is one logits call over the held-out rows, unless its selection was
    # already scored; with_curve's eval is the final scoring alone, as without a curve.
    assert 1 <= with_curve.curve_eval.calls <= 4
    assert with_curve.curve_eval.input_tokens > 0
    assert with_curve.evaluation.input_tokens == plain.evaluation.input_tokens
    # Points sit at the tuning tokens spent when they were taken, never beyond the fit's.
    assert all(0 <= p.tokens <= with_curve.fit.input_tokens for p in held)
    data = with_curve.as_dict()
    assert data["curve_eval"]["calls"] == with_curve.curve_eval.calls


def test_the_plot_draws_held_out_curves_solid_and_dev_dashed(
    mock_service: LocalClient, task: Task, rows: list[Example], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.figure

    settings = CompareSettings(["manual", "bbt"], 2, 2, budget=20, n_test=10, n_tokens=4)
    comp = compare(mock_service, task, rows, settings)
    report.write(comp, tmp_path)
    figures: list[Any] = []
    original = matplotlib.figure.Figure.savefig

    def keep(self: Any, *args: Any, **kwargs: Any) -> None:
        figures.append(self)
        original(self, *args, **kwargs)

    pytest.MonkeyPatch().setattr(matplotlib.figure.Figure, "savefig", keep)
    runs = report.load_runs(json.loads((tmp_path / report.JSON_FILE).read_text()))
    assert [(r.method, r.seed) for r in runs] == [(r.method, r.seed) for r in comp.runs]
    out = report.plot_runs(runs, "t", "accuracy", tmp_path / "again.png")
    assert out.stat().st_size > 1000
    (fig,) = figures
    for ax in fig.axes:  # calls, then tokens
        lines = ax.get_lines()
        solid = [ln for ln in lines if ln.get_linestyle() == "-"]
        dashed = [ln for ln in lines if ln.get_linestyle() == "--"]
        assert len(solid) == 2  # one held-out curve per bbt seed
        assert len(dashed) == 2  # one dev curve per bbt seed
        assert all(len(ln.get_xdata()) >= 2 for ln in solid)
        # manual and bbt points: one per method and seed.
        assert sum(len(c.get_offsets()) for c in ax.collections) == 4
