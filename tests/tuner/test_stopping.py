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
