"""Test helpers for pipelines built on bbt: the mock model in-process, via respx, or live.

Pytest fixtures (registered automatically through the ``bbt`` pytest plugin, see
:mod:`bbt.testing.plugin`): ``mock_backend``, ``mock_app``, ``mock_client``, ``mock_respx``,
``live_mock_server``, ``live_mock_server_factory``, ``vllm_fake`` and ``live_vllm_fake``.

Only ``mock_app`` and the live servers need the ``server`` extra (FastAPI, uvicorn); the
in-process transports run the same framework-free core the app does, so importing this
package never needs it.

The names below are imported on first use (PEP 562): pytest imports this package, through
the plugin, into every run of every project that installs bbt, and the transports bring the
server's core with them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bbt.testing._live import LiveServer, live_server
    from bbt.testing._transport import (
        MOCK_BASE_URL,
        AsyncCoreTransport,
        CoreTransport,
        mock_respx_router,
    )

#: Each public name and the module that defines it.
_WHERE = {
    "MOCK_BASE_URL": "bbt.testing._transport",
    "AsyncCoreTransport": "bbt.testing._transport",
    "CoreTransport": "bbt.testing._transport",
    "LiveServer": "bbt.testing._live",
    "live_server": "bbt.testing._live",
    "mock_respx_router": "bbt.testing._transport",
}

__all__ = [
    "MOCK_BASE_URL",
    "AsyncCoreTransport",
    "CoreTransport",
    "LiveServer",
    "live_server",
    "mock_respx_router",
]


def __getattr__(name: str) -> Any:
    try:
        module = _WHERE[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups do not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
