"""What the benchmark smoke tests share: where the scripts and ../shared/data are, importing a
script as a module, and the offline environment the scripts run under."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
#: SST-2 and AG News beside the checkout (as in CI); a bare clone has no copy of them.
SHARED_DATA = Path(__file__).resolve().parents[3] / "shared" / "data"


def bench_module(name: str) -> ModuleType:
    """The benchmark script ``benchmarks/<name>.py``, imported as a module."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def go_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No model hub, and the scripts' own directory importable (their ``_common``)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.syspath_prepend(str(BENCHMARKS))
