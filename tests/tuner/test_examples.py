"""The shipped example runs offline and does what it says."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bbt.tuner import load_result

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.py"


@pytest.mark.slow
def test_pipeline_example_tunes_reloads_and_scores(tmp_path: Path) -> None:
    # One BLAS thread: the example's d = 500 CMA-ES is slow when threads fight for cores.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [sys.executable, str(EXAMPLE), str(tmp_path / "run")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "held-out accuracy" in r.stdout
    result = load_result(tmp_path / "run")
    assert result.dev_metric is not None
    assert result.dev_metric >= 0.85
