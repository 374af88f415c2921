"""benchmarks/engines_gpu.py: imports without a GPU, --help, and its mode check on the fake."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

from bbt.testing.vllm_fake import VLLMFake, serve_vllm_fake

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_help_and_the_mode_check_on_the_fake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delenv("BBT_API_KEY", raising=False)
    sys.modules.pop("engines_gpu", None)
    gpu = importlib.import_module("engines_gpu")
    with pytest.raises(SystemExit) as exit_info:
        gpu.main(["--help"])
    assert exit_info.value.code == 0
    assert "--calls" in capsys.readouterr().out
    fake = VLLMFake(sentencepiece=True)
    fake.write_model_files(tmp_path)
    with serve_vllm_fake(fake) as url:
        gap = gpu.agree(url, tmp_path)
    assert gap <= 1e-5
    assert "lead=' '" in capsys.readouterr().out
