"""The package's public surface: complete, sorted, and true to the Service protocol."""

from __future__ import annotations

import inspect
import subprocess
import sys

import bbt.client
from bbt.client import AsyncClient, Client, LocalClient

from .fakes import texts
from .service_conformance import assert_is_service


def test_all_is_sorted_and_complete() -> None:
    assert bbt.client.__all__ == sorted(bbt.client.__all__)
    public = {n for n in dir(bbt.client) if not n.startswith("_")} - {"annotations"}
    # Only the private modules (imported as attributes) may be left out of __all__.
    assert set(bbt.client.__all__) == public - {
        n for n in public if inspect.ismodule(getattr(bbt.client, n))
    }
    assert set(bbt.client.__all__) == {
        "AsyncClient",
        "Client",
        "ClientSettings",
        "FeatureService",
        "LocalClient",
        "ProjectionSession",
        "ScoreService",
        "Service",
        "SessionService",
        "UsageStats",
    }


def test_client_is_a_service(make_client: object) -> None:
    client = make_client()  # type: ignore[operator]
    assert_is_service(client, texts(3))


def test_async_client_mirrors_every_service_method() -> None:
    service_methods = ("model_info", "tokenize", "embed", "logits", "models", "health")
    session_methods = ("supports_sessions", "open_session", "session_logits", "close_session")
    for name in service_methods + session_methods:
        sync, async_ = getattr(Client, name), getattr(AsyncClient, name)
        assert inspect.iscoroutinefunction(async_), name
        assert not inspect.iscoroutinefunction(sync), name
        assert list(inspect.signature(sync).parameters) == list(
            inspect.signature(async_).parameters
        )
        assert hasattr(LocalClient, name)


def test_importing_the_client_pulls_no_server_stack() -> None:
    code = (
        "import sys, bbt.client; "
        "bad = [m for m in ('fastapi', 'uvicorn', 'torch', 'transformers') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
