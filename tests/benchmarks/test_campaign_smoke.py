"""The reliability campaign's scripts (benchmarks/chaos.py, benchmarks/crash_points.py) in
``--smoke`` mode: each drives real ``bbt mock-server`` and ``bbt tune`` subprocesses on
loopback, so these tests check the behaviour itself, not only that the scripts run.

Neither needs ``../shared/data``: both tune the mock task.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    # The scripts strip BBT_* from their children; keep this process clean as well.
    for name in ("BBT_BASE_URL", "BBT_API_KEY", "BBT_TIMEOUT"):
        monkeypatch.delenv(name, raising=False)


def _module(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _result(path: Path) -> dict[str, Any]:
    assert path.is_file(), f"{path} was not written"
    data: dict[str, Any] = json.loads(path.read_text())
    assert data["command"]
    assert data["commit"]
    assert data["machine"]["cpus"]
    return data


@pytest.mark.slow
def test_chaos_run_survives_faults_and_a_server_kill(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _module("chaos").main(["--smoke", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    data = _result(tmp_path / "chaos_smoke.json")
    assert code == 0, out[-3000:]
    assert data["ok"]
    assert data["identical"]
    chaos, clean = data["runs"]["chaos"], data["runs"]["fault_free"]
    assert clean["completed"]
    assert chaos["completed"]
    assert clean["retries"] == 0
    # The server really died mid-run and came back on its port; the client noticed.
    assert chaos["server_restarts"] == 1
    assert all(k["tune_running_at_kill"] for k in chaos["server_kills"])
    assert chaos["server_incarnations"] == 2
    assert chaos["retries"] >= 1
    assert chaos["calls"] == clean["calls"]


@pytest.mark.slow
def test_crash_points_resume_bitwise_and_bound_the_calls_spent_twice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = _module("crash_points").main(["--smoke", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    data = _result(tmp_path / "crash_points_smoke.json")
    assert code == 0, out[-3000:]
    assert data["violations"] == []
    assert data["reference"]["counts_agree"]
    trials = data["trials"]
    assert len(trials) == 2
    # The two narrow windows were hit, as shown by evidence (a temp file, the access log).
    assert {h for t in trials for h in t["hit"]} >= {"checkpoint write", "dev scoring"}
    for t in trials:
        assert t["killed_mid_run"]
        assert t["resume_exit"] == 0
        assert t["identical"]
        assert 0 <= t["calls_spent_twice"] <= data["calls_spent_twice"]["allowed_per_kill"]
