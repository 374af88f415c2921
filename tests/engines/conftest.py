"""The engine contract suite: bbt's requests checked by vLLM's own code.

Runs only where vLLM's wheel is importable: ``scripts/engine_contracts.sh`` builds
``.venv-engines`` with pinned versions and runs this folder with ``--import-mode=importlib``
(pytest's default mode puts ``tests/`` on ``sys.path``, where ``tests/vllm`` would shadow
the ``vllm`` package); ``.ci/run`` calls the script. Elsewhere nothing here is collected."""

from __future__ import annotations

import importlib.util

import pytest


def _real_vllm() -> bool:
    try:
        return importlib.util.find_spec("vllm.entrypoints.openai") is not None
    except (ImportError, ValueError):
        return False


if not _real_vllm():
    collect_ignore_glob = ["test_*.py"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/tests/engines/" in str(item.path):
            item.add_marker(pytest.mark.engines)
