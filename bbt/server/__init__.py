"""Serving protocol v1: the backend contract, the app factory, the mock model, fault injection.

Only :mod:`bbt.server.backend` and :mod:`bbt.server.mock` are free of FastAPI; importing
``create_app`` needs the ``server`` extra (``pip install 'bbt[server]'``), so it is loaded
on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bbt.server._failures import APIFailure
from bbt.server.backend import Backend
from bbt.server.faults import FaultConfig
from bbt.server.mock import (
    MOCK_MASK_TOKEN,
    MOCK_MODEL_ID,
    MOCK_TEMPLATE,
    MOCK_VERBALIZER,
    MockBackend,
    sample_mock_dataset,
)
from bbt.server.settings import ServerSettings

if TYPE_CHECKING:
    from bbt.server.app import create_app


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from bbt.server.app import create_app

        return create_app
    raise AttributeError(f"module 'bbt.server' has no attribute {name!r}")


__all__ = [
    "MOCK_MASK_TOKEN",
    "MOCK_MODEL_ID",
    "MOCK_TEMPLATE",
    "MOCK_VERBALIZER",
    "APIFailure",
    "Backend",
    "FaultConfig",
    "MockBackend",
    "ServerSettings",
    "create_app",
    "sample_mock_dataset",
]
