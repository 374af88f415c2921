"""A run killed with SIGKILL mid-way and resumed ends exactly like an uninterrupted one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bbt.errors import RunError
from bbt.tuner import read_manifest
from bbt.tuner.run import HISTORY, load_checkpoint

ARGS = [
    "tune",
    "--task",
    "mock",
    "--mock",
    "--mock-hidden-size",
    "32",
    "-n",
    "10",
    "-d",
    "100",
    "--popsize",
    "10",
    "--budget",
    "800",
    "--eval-every",
    "50",
    "--seed",
    "7",
    "--no-plot",
    "-q",
]
KILL_AFTER_GENERATION = 20
TOTAL_GENERATIONS = 80
CODE = "import sys; from bbt.cli import main; sys.argv = ['bbt', *sys.argv[1:]]; main()"
# One BLAS thread: fast on a shared machine, and the same arithmetic in every process.
THREADS = {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _env() -> dict[str, str]:
    # Read at call time: the subprocesses share the test's BBT_HOME (its checkpoint key).
    return {**os.environ, **THREADS}


def _bbt(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", CODE, *args], env=_env(), capture_output=True, text=True, timeout=300
    )


def _generation(run: Path) -> int:
    try:
        data = load_checkpoint(run)
    except RunError:  # no manifest yet
        return -1
    return -1 if data is None else int(data["generation"])


def _history(run: Path) -> list[dict[str, object]]:
    rows = [json.loads(x) for x in (run / HISTORY).read_text().splitlines()]
    for r in rows:
        r.pop("wall_time")
    return rows


@pytest.mark.slow
def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path: Path) -> None:
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-c", CODE, *ARGS, "--out", str(killed)],
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while _generation(killed) < KILL_AFTER_GENERATION:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline, "the run did not get going"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    at_kill = _generation(killed)
    assert KILL_AFTER_GENERATION <= at_kill < TOTAL_GENERATIONS  # killed mid-run
    assert read_manifest(killed)["status"] == "running"  # no chance to say anything
    assert not (killed / "z.npy").exists()

    r = _bbt("tune", "--resume", str(killed), "-q")
    assert r.returncode == 0, r.stderr

    full = tmp_path / "full"
    r = _bbt(*ARGS, "--out", str(full))
    assert r.returncode == 0, r.stderr

    z_full = np.load(full / "z.npy")
    z_resumed = np.load(killed / "z.npy")
    assert z_resumed.tobytes() == z_full.tobytes()  # bitwise
    a, b = read_manifest(full)["result"], read_manifest(killed)["result"]
    a.pop("elapsed_s")
    b.pop("elapsed_s")
    assert a == b
    assert a["generations"] == TOTAL_GENERATIONS
    assert _history(full) == _history(killed)
    assert np.load(full / "prompt.npy").tobytes() == np.load(killed / "prompt.npy").tobytes()
