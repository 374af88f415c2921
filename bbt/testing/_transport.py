"""In-process transports over the server's core: no sockets, no FastAPI.

They answer exactly what the app answers (same checks, same envelopes, same headers)
because they run the same core; only fault injection is left to the live server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from bbt.server.backend import Backend

# The transports are the server's (its in-process service, bbt.server.local); they are
# re-exported here, where tests have always found them.
from bbt.server.local import AsyncCoreTransport, CoreTransport, as_core, respond
from bbt.server.settings import ServerSettings

if TYPE_CHECKING:
    import respx

    from bbt.server.local import ServiceCore

__all__ = ["MOCK_BASE_URL", "AsyncCoreTransport", "CoreTransport", "mock_respx_router"]

#: Base URL that :func:`mock_respx_router` answers on (any URL works with the transports).
MOCK_BASE_URL = "http://bbt-mock.test"


def mock_respx_router(
    target: Backend | ServiceCore,
    settings: ServerSettings | None = None,
    base_url: str = MOCK_BASE_URL,
) -> respx.MockRouter:
    """A respx router answering every request under ``base_url`` from ``target``.

    Use it as a context manager (``with router: ...``) to intercept httpx globally.
    """
    try:
        import respx
    except ImportError as exc:  # pragma: no cover - respx is a dev dependency
        from bbt.errors import ConfigurationError

        raise ConfigurationError("mock_respx needs respx: pip install respx") from exc
    core = as_core(target, settings)
    router = respx.MockRouter(base_url=base_url, assert_all_called=False)

    def serve(request: httpx.Request) -> httpx.Response:
        return respond(core, request, request.read())

    router.route().mock(side_effect=serve)
    return router
