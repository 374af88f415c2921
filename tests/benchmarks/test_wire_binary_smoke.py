"""benchmarks/wire_binary.py in --smoke mode: it runs, prints its table, writes its JSON, and
its two bodies decode to the same prompts (the script asserts it)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_wire_binary_smoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    mod = importlib.import_module("wire_binary")
    assert mod.main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "json+base64" in out
    assert "binary saves" in out
    data = json.loads((tmp_path / "wire_binary_smoke.json").read_text())
    forms = {(r["dtype"], r["body"]) for r in data["rows"]}
    assert forms == {
        (d, b) for d in ("float32", "float16") for b in ("json+base64", "json/jiter", "binary")
    }
    # Base64 costs 4/3 of the tensor; the binary body carries it as is.
    by = {(r["dtype"], r["body"]): r["bytes"] for r in data["rows"]}
    assert by["float32", "binary"] < by["float32", "json+base64"]
