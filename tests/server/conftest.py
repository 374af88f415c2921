"""Fixtures for server tests.

The contract suite every backend runs is shipped (bbt.testing.contracts.BackendContract);
test_contract.py subclasses it once per backend.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from bbt.server import Backend, MockBackend, ServerSettings
from bbt.server.app import create_app


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
