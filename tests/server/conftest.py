"""Fixtures for server tests.

The contract suite every backend runs is shipped (bbt.testing.contracts.BackendContract);
test_contract.py subclasses it once per backend.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from bbt.server import Backend, MockBackend, ServerSettings
from bbt.server.app import create_app


@pytest.fixture(scope="session")
def tiny_causal_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random-weight GPT-2 and Llama causal LMs (bbt.testing.tiny_models), built once
    for every test that reads them (nothing may write into them: copy first)."""
    from bbt.testing.tiny_models import build_tiny_causal_lm

    root = tmp_path_factory.mktemp("tiny-causal")
    return {arch: build_tiny_causal_lm(root / arch, arch) for arch in ("gpt2", "llama")}  # type: ignore[arg-type]


@pytest.fixture
def mock() -> MockBackend:
    return MockBackend(hidden_size=64, seed=0)


@pytest.fixture
def make_client() -> Callable[..., TestClient]:
    """``make_client(backend, settings=None, faults=None)``: a TestClient for a fresh app."""

    def make(backend: Backend, settings: ServerSettings | None = None, **kw: object) -> TestClient:
        app = create_app(backend, settings or ServerSettings(api_keys=[]), **kw)  # type: ignore[arg-type]
        return TestClient(app)

    return make
