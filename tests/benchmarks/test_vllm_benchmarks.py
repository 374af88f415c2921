"""benchmarks/vllm_live.py against the vLLM fake, and benchmarks/vllm_wire.py in smoke mode."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bbt.testing.vllm_fake import VLLMFake, serve_vllm_fake

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.delenv("BBT_API_KEY", raising=False)
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_vllm_live_against_the_fake(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    live = _module("vllm_live", monkeypatch)
    fake = VLLMFake(api_key="sk-live-canary-5")
    cfg, emb = fake.write_model_files(tmp_path / "model")
    with serve_vllm_fake(fake) as url:
        rc = live.main(
            [
                "--base-url",
                url,
                "--api-key",
                "sk-live-canary-5",
                "--config",
                str(cfg),
                "--embeddings",
                str(emb),
                "--template",
                "{text} It was",
                "--words",
                " bad",
                " great",
                "--prompts",
                "2",
                "--out-dir",
                str(tmp_path),
            ]
        )
    out = capsys.readouterr().out
    assert rc == 0, out
    for check in ("version", "tokenize", "black-box scoring", "logprob_token_ids", "modes agree"):
        assert f"ok  {check}:" in out
    record = json.loads((tmp_path / "vllm_live.json").read_text())
    assert record["version"] == "0.26.0"
    assert record["max_gap"] < 1e-3
    assert "sk-live-canary-5" not in out + json.dumps(record)


def test_vllm_live_reports_a_server_without_prompt_embeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    live = _module("vllm_live", monkeypatch)
    fake = VLLMFake(enable_prompt_embeds=False)
    cfg, _ = fake.write_model_files(tmp_path / "model")
    with serve_vllm_fake(fake) as url:
        rc = live.main(
            [
                "--base-url",
                url,
                "--config",
                str(cfg),
                "--template",
                "{text} It was",
                "--words",
                " bad",
                " great",
                "--out-dir",
                str(tmp_path),
            ]
        )
    out = capsys.readouterr().out
    assert rc == 1
    assert "FAIL  black-box scoring" in out
    assert "--enable-prompt-embeds" in out


def test_vllm_wire_smoke(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    wire = _module("vllm_wire", monkeypatch)
    assert wire.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| vLLM black-box (chat) | float32 | 6 |" in out  # P x B = 2 x 3 requests
    assert "| vLLM embedding table | float32 | 2 |" in out  # one per prompt
    rows = json.loads((tmp_path / "vllm_wire_smoke.json").read_text())["rows"]
    assert {r["interface"] for r in rows} == {
        "bbt protocol v1",
        "vLLM black-box (chat)",
        "vLLM embedding table",
    }
