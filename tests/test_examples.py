"""Every script under examples/ runs against the mock and does what it says, so none can rot.

Each example is run as a user would run it (a subprocess, from the repository root), with
the smallest settings it accepts so the suite stays quick on two cores.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from bbt.tuner import load_result, read_manifest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# The examples this module runs; test_every_example_is_run keeps the list complete.
COVERED = {
    "pipeline.py",
    "mock_three_seeds.sh",
    "sklearn_pipeline.py",
    "sklearn_grid_search.py",
    "mlflow_tracking.py",
}
# `bbt` for the shell example: the interpreter running the suite, importing this checkout.
BBT_CODE = "import sys; from bbt.cli import main; sys.argv = ['bbt', *sys.argv[1:]]; main()"
SEED_LINE = re.compile(
    r"^seed (\d+): dev accuracy ([0-9.]+) \(p0\) -> ([0-9.]+), first >= 0\.90 at \S+ calls, "
    r"selected at \d+ of (\d+) calls$",
    re.MULTILINE,
)


def _env(**extra: str) -> dict[str, str]:
    # One BLAS thread: the examples' d = 500 CMA-ES crawls when threads fight for cores.
    # PYTHONPATH: the checkout's bbt, whatever is installed.
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": path,
        **extra,
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_every_example_is_run() -> None:
    shipped = {p.name for p in EXAMPLES.iterdir() if p.suffix in (".py", ".sh")}
    assert shipped == COVERED, "an example without a test in tests/test_examples.py can rot"


@pytest.mark.slow
def test_pipeline_example_tunes_reloads_and_scores(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / "pipeline.py"), str(tmp_path / "run")],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "held-out accuracy" in r.stdout
    result = load_result(tmp_path / "run")
    assert result.dev_metric is not None
    assert result.dev_metric >= 0.85


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("bash") is None, reason="the example is a bash script")
def test_mock_three_seeds_example_tunes_each_seed_over_http(tmp_path: Path) -> None:
    # The script starts `bbt mock-server` and runs `bbt tune` against it over HTTP; SEEDS and
    # BUDGET shrink its 3 x 1,000 calls to 2 x 200 (the mock passes 0.9 dev accuracy by 200).
    bbt = tmp_path / "bbt"
    bbt.write_text(f'#!/bin/sh\nexec "{sys.executable}" -c "{BBT_CODE}" "$@"\n')
    bbt.chmod(bbt.stat().st_mode | stat.S_IXUSR)
    out = tmp_path / "out"
    r = subprocess.run(
        ["bash", str(EXAMPLES / "mock_three_seeds.sh")],
        cwd=ROOT,
        env=_env(BBT=str(bbt), PORT=str(_free_port()), OUT=str(out), SEEDS="1 2", BUDGET="200"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr + (out / "server.log").read_text(errors="replace")
    lines = SEED_LINE.findall(r.stdout)
    assert [seed for seed, *_ in lines] == ["1", "2"], r.stdout
    for seed, p0, tuned, calls in lines:
        assert int(calls) == 200
        assert float(tuned) > float(p0), f"seed {seed}: tuning did not beat p0"
        assert read_manifest(out / f"seed{seed}")["result"]["calls"] == 200


def _run_example(name: str, *args: str) -> str:
    r = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.slow
def test_sklearn_pipeline_example_cross_validates_fits_and_pickles() -> None:
    pytest.importorskip("sklearn")
    out = _run_example("sklearn_pipeline.py")
    mean = float(re.search(r"\(mean ([0-9.]+)\)", out).group(1))  # type: ignore[union-attr]
    held = float(re.search(r"held-out accuracy on 300 texts: ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert mean >= 0.7, out
    assert held >= 0.8, out
    assert "same predictions: True" in out


@pytest.mark.slow
def test_sklearn_grid_search_example_tries_four_settings() -> None:
    pytest.importorskip("sklearn")
    out = _run_example("sklearn_grid_search.py")
    assert len(re.findall(r"^  n_tokens=\d+ +budget=\d+ +cv accuracy", out, re.MULTILINE)) == 4
    held = float(re.search(r"refitted best: ([0-9.]+)", out).group(1))  # type: ignore[union-attr]
    assert held >= 0.8, out


@pytest.mark.slow
def test_mlflow_example_logs_and_reads_back(tmp_path: Path) -> None:
    pytest.importorskip("mlflow")
    out = _run_example("mlflow_tracking.py", str(tmp_path))
    assert "(FINISHED)" in out
    assert "loss_min logged at 20 generations" in out
    assert "dev_metric at calls [50, 100, 150, 200]" in out
    assert "run/manifest.json" in out
    assert (tmp_path / "mlruns").is_dir()
