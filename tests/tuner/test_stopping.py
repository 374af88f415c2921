"""``TuneConfig.patience_calls``: a run stops when the dev selection has not improved for N
calls, the budget stays the cap, and the result, the manifest and the summary say how many
calls stopping saved."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.server.mock import MockBackend
from bbt.tuner import Example, GenerationRecord, Task, TuneConfig, read_manifest
from bbt.tuner import tune as tune_run
from bbt.tuner._state import RunState
from bbt.tuner.stopping import IMPROVED_AT, after_dev_check, calls_saved

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]


def test_the_rule_counts_calls_since_the_last_improving_check() -> None:
    st = RunState()
    st.calls = 40
    after_dev_check(st, improved=True, patience_calls=60)
    assert st.extra[IMPROVED_AT] == 40
    st.calls = 80
    after_dev_check(st, improved=False, patience_calls=60)
    assert st.stop_reason is None  # 40 calls without gain
    st.calls = 100
    after_dev_check(st, improved=False, patience_calls=60)
    assert st.stop_reason == "patience_calls"  # 60
    fresh = RunState()
    fresh.calls = 60
    after_dev_check(fresh, improved=False, patience_calls=60)  # counted from p0 at 0
    assert fresh.stop_reason == "patience_calls"
    off = RunState()
    off.calls = 10_000
    after_dev_check(off, improved=False, patience_calls=None)
    assert off.stop_reason is None


def test_calls_saved_counts_only_early_stops() -> None:
    assert calls_saved(200, 120, "patience_calls") == 80
    assert calls_saved(200, 120, "early_stopping") == 80
    assert calls_saved(200, 192, "budget") == 0
    assert calls_saved(200, 120, "callback") == 0


def test_patience_calls_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="patience_calls must be at least 1"):
        TuneConfig(patience_calls=0)


def _dev_stuck(mock_task: Task, split: Split) -> Split:
    """A dev set of one example: the selection can improve at most once."""
    train, dev = split
    return train, dev[:1]


def test_a_run_without_gain_stops_and_the_manifest_says_what_it_saved(
    mock_task: Task, split: Split, tmp_path: Path
) -> None:
    train, dev = _dev_stuck(mock_task, split)
    records: list[GenerationRecord] = []
    cfg = small_config(budget=400, eval_every=16, patience_calls=48)
    res = tune_run(
        LocalClient(MockBackend(hidden_size=H)),
        mock_task,
        train,
        dev,
        cfg,
        run_dir=tmp_path / "r",
        callbacks=[records.append],
    )
    assert res.stop_reason == "patience_calls"
    assert res.calls < 400
    assert res.calls_saved == 400 - res.calls
    # It stopped at the first check 48 calls or more after the last gain.
    improving = [0] + [r.calls for r in records if r.selected_calls == r.calls]
    assert res.calls - max(c for c in improving if c <= res.calls) >= 48
    manifest = read_manifest(tmp_path / "r")
    assert manifest["config"]["patience_calls"] == 48
    assert manifest["result"]["calls_saved"] == res.calls_saved
    assert manifest["result"]["stop_reason"] == "patience_calls"


def test_without_the_rule_the_same_run_spends_the_budget(mock_task: Task, split: Split) -> None:
    train, dev = _dev_stuck(mock_task, split)
    res = tune_run(
        LocalClient(MockBackend(hidden_size=H)),
        mock_task,
        train,
        dev,
        small_config(budget=400, eval_every=16),
    )
    assert res.stop_reason == "budget"
    assert res.calls_saved == 0


def test_the_cli_summary_says_how_many_calls_were_saved(tmp_path: Path) -> None:
    from bbt.cli import app

    args = ["tune", "--task", "mock", "--mock", "--out", str(tmp_path / "r"), "--budget", "400"]
    args += ["--dim", "20", "--popsize", "8", "--eval-every", "8", "--patience-calls", "8"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = read_manifest(tmp_path / "r")["result"]["calls_saved"]
    assert saved > 0
    assert f"stop: patience_calls, {saved} calls saved" in r.output


def test_a_stopped_run_is_a_prefix_of_the_full_run(mock_task: Task, split: Split) -> None:
    """What benchmarks/stopping.py relies on to replay the rule over one full run."""
    train, dev = _dev_stuck(mock_task, split)
    full: list[GenerationRecord] = []
    part: list[GenerationRecord] = []
    service = LocalClient(MockBackend(hidden_size=H))
    tune_run(
        service,
        mock_task,
        train,
        dev,
        small_config(budget=400, eval_every=8),
        callbacks=[full.append],
    )
    res = tune_run(
        service,
        mock_task,
        train,
        dev,
        small_config(budget=400, eval_every=8, patience_calls=24),
        callbacks=[part.append],
    )
    assert res.stop_reason == "patience_calls"
    assert 0 < len(part) < len(full)
    keys = ("calls", "loss_min", "best_loss", "dev_metric", "selected_calls")
    assert [[getattr(r, k) for k in keys] for r in part] == [
        [getattr(r, k) for k in keys] for r in full[: len(part)]
    ]
    # The replay of the rule over the full run stops where the real run stopped.
    from bbt.tuner.stopping import stop_due

    improved_at, last, stop = 0, 0, None
    for r in full:
        if r.selected_calls != last:
            improved_at, last = r.calls, r.selected_calls
        if stop_due(r.calls, improved_at, 24):
            stop = r.calls
            break
    assert stop == res.calls


# --------------------------------------------------------------------------- --stop-ucb


def test_the_bound_reads_the_recent_gains() -> None:
    from bbt.tuner.stopping import UCB_Z, ucb_gain

    assert ucb_gain([0.5, 0.5, 0.5], window=3) is None  # three gains needed
    assert ucb_gain([0.5] * 5, window=4) == 0.0  # flat: nothing to expect
    steady = ucb_gain([0.50, 0.51, 0.52, 0.53, 0.54], window=4)
    assert steady == pytest.approx(4 * 0.01)  # no spread: 4 checks of 0.01
    jump = ucb_gain([0.5, 0.5, 0.5, 0.5, 0.6], window=4)
    spread = ((3 * 0.025**2 + 0.075**2) / 3) ** 0.5  # gains 0, 0, 0, 0.1: sample std
    assert jump == pytest.approx(4 * (0.025 + UCB_Z * spread / 2))
    assert ucb_gain([0.5, 0.5, 0.5, 0.5, 0.6], window=4, checks_left=1) == pytest.approx(jump / 4)


def test_the_rule_waits_for_min_calls_and_a_full_window() -> None:
    from bbt.tuner.stopping import ucb_stop_due

    flat = [0.5] * 6
    assert ucb_stop_due(flat, 100, 400, 20, 0.01, 4, min_calls=0)
    assert not ucb_stop_due(flat, 100, 400, 20, 0.01, 4, min_calls=120)
    assert not ucb_stop_due(flat[:4], 100, 400, 20, 0.01, 4, min_calls=0)
    rising = [0.5, 0.52, 0.54, 0.56, 0.58]
    assert not ucb_stop_due(rising, 100, 400, 20, 0.01, 4, min_calls=0)
    assert ucb_stop_due(rising, 100, 400, 20, 0.1, 4, min_calls=0)  # gains below 0.1


def test_stop_ucb_must_be_positive() -> None:
    with pytest.raises(ConfigurationError, match="stop_ucb"):
        TuneConfig(stop_ucb=0.0)
    with pytest.raises(ConfigurationError, match="stop_window"):
        TuneConfig(stop_ucb=0.01, stop_window=1)


def test_a_ucb_stopped_run_is_a_prefix_of_the_full_run_and_says_what_it_saved(
    mock_task: Task, split: Split, tmp_path: Path
) -> None:
    from bbt.tuner.stopping import DEV_CURVE, ucb_stop_due

    train, dev = _dev_stuck(mock_task, split)
    full: list[GenerationRecord] = []
    part: list[GenerationRecord] = []
    service = LocalClient(MockBackend(hidden_size=H))
    tune_run(
        service,
        mock_task,
        train,
        dev,
        small_config(budget=400, eval_every=8),
        callbacks=[full.append],
    )
    cfg = small_config(budget=400, eval_every=8, stop_ucb=0.01, stop_window=3, stop_min_calls=96)
    res = tune_run(
        service, mock_task, train, dev, cfg, run_dir=tmp_path / "r", callbacks=[part.append]
    )
    assert res.stop_reason == "ucb"
    assert 96 <= res.calls < 400  # never before stop_min_calls
    assert res.calls_saved == 400 - res.calls
    manifest = read_manifest(tmp_path / "r")
    assert manifest["config"]["stop_ucb"] == 0.01
    assert manifest["result"]["calls_saved"] == res.calls_saved
    keys = ("calls", "loss_min", "best_loss", "dev_metric", "selected_calls", "best_dev_metric")
    assert [[getattr(r, k) for k in keys] for r in part] == [
        [getattr(r, k) for k in keys] for r in full[: len(part)]
    ]
    # Replaying the rule over the full run's improvement curve stops at the same call.
    assert res.initial_dev_metric is not None
    curve = [res.initial_dev_metric]
    stop = None
    for r in full:
        if r.best_dev_metric is None:
            continue
        curve.append(r.best_dev_metric)
        if ucb_stop_due(curve, r.calls, 400, 8, 0.01, 3, 96):
            stop = r.calls
            break
    assert stop == res.calls
    assert DEV_CURVE not in manifest["config"]


def test_the_cli_summary_says_what_ucb_saved(tmp_path: Path) -> None:
    from bbt.cli import app

    args = ["tune", "--task", "mock", "--mock", "--out", str(tmp_path / "r"), "--budget", "400"]
    args += ["--dim", "20", "--popsize", "8", "--eval-every", "8", "--stop-ucb", "0.5"]
    args += ["--stop-window", "2", "--stop-min-calls", "48"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    saved = read_manifest(tmp_path / "r")["result"]["calls_saved"]
    assert saved > 0
    assert f"stop: ucb, {saved} calls saved" in r.output
