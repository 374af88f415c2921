"""Test helpers for pipelines built on bbt: the mock model in-process, via respx, or live.

Pytest fixtures (registered automatically through the ``bbt`` pytest plugin, see
:mod:`bbt.testing.plugin`): ``mock_backend``, ``mock_app``, ``mock_client``, ``mock_respx``,
``live_mock_server`` and ``live_mock_server_factory``.

Only ``mock_app`` and the live server need the ``server`` extra (FastAPI, uvicorn); the
in-process transports run the same framework-free core the app does, so importing this
package never needs it.
"""

from bbt.testing._live import LiveServer, live_server
from bbt.testing._transport import (
    MOCK_BASE_URL,
    AsyncCoreTransport,
    CoreTransport,
    mock_respx_router,
)

__all__ = [
    "MOCK_BASE_URL",
    "AsyncCoreTransport",
    "CoreTransport",
    "LiveServer",
    "live_server",
    "mock_respx_router",
]
