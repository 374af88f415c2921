"""The shipped example runs offline and does what it says."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from bbt.tuner import load_result

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pipeline.py"


@pytest.mark.slow
def test_pipeline_example_tunes_reloads_and_scores(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = importlib.util.spec_from_file_location("bbt_example_pipeline", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path / "run")
    out = capsys.readouterr().out
    assert "held-out accuracy" in out
    result = load_result(tmp_path / "run")
    assert result.dev_metric is not None
    assert result.dev_metric >= 0.85
