"""The issue-10 session benchmarks run (smoke sizes): figures are not checked, their keys are."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_client_overhead_sessions(tmp_path: Path) -> None:
    out = _script("client_overhead", "--sessions", "--smoke", "--out", str(tmp_path / "s.json"))
    assert "pycma ask + tell" in out
    data = json.loads((tmp_path / "s.json").read_text())
    assert set(data["bytes_up_per_candidate"]) == {"full", "session"}
    assert data["bytes_up_per_candidate"]["session"] < data["bytes_up_per_candidate"]["full"]
    assert set(data["client_to_pycma"]) == {"full", "session"}
    assert data["ms_per_generation"]["server_session_projection"] > 0


@pytest.mark.model
def test_sessions_gpu_runs_on_the_cpu(tmp_path: Path) -> None:
    out = _script("sessions_gpu", "--device", "cpu", "--smoke", "--out", str(tmp_path / "g.json"))
    assert "bare forward" in out
    data = json.loads((tmp_path / "g.json").read_text())
    assert set(data["modes"]) == {"full", "session"}
    assert all(m["generation"] > 0 for m in data["modes"].values())
