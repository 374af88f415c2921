"""The engine contract suite: bbt's requests checked by vLLM's and SGLang's own code.

Each engine's tests run only where its wheel is on the path: ``scripts/engine_contracts.sh``
builds ``.venv-engines`` with pinned versions and runs this folder with
``--import-mode=importlib`` (pytest's default mode puts ``tests/`` on ``sys.path``, where
``tests/vllm`` would shadow the ``vllm`` package), once per engine version; ``.ci/run``
calls the script. Elsewhere the contract files are not collected; the tests of the engine
base itself (``bbt.engines``: test_service.py, test_codec.py) run everywhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _real_vllm() -> bool:
    try:
        return importlib.util.find_spec("vllm.entrypoints.openai") is not None
    except (ImportError, ValueError):
        return False


def _real_sglang() -> bool:
    # find_spec of the top-level package runs nothing (SGLang's __init__ imports triton).
    # Under pytest's default import mode ``tests/`` is on sys.path and ``tests/sglang`` (bbt's
    # own adapter tests) is found as "sglang": only a package with SGLang's sources counts.
    try:
        spec = importlib.util.find_spec("sglang")
    except (ImportError, ValueError):
        return False
    if spec is None or not spec.submodule_search_locations:
        return False
    return any(
        (Path(p) / "srt" / "managers" / "io_struct.py").is_file()
        for p in spec.submodule_search_locations
    )


_CONTRACTS = ("test_vllm_", "test_sglang_")

collect_ignore_glob = [
    *([] if _real_vllm() else ["test_vllm_*.py"]),
    *([] if _real_sglang() else ["test_sglang_*.py"]),
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The contract files only: the engine base's own tests (test_service.py, test_codec.py)
    # need no engine and run with the rest of the suite.
    for item in items:
        if "/tests/engines/" in str(item.path) and item.path.name.startswith(_CONTRACTS):
            item.add_marker(pytest.mark.engines)
