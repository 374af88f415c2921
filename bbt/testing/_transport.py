"""In-process transports over :class:`~bbt.server._core.ServiceCore`: no sockets, no FastAPI.

They answer exactly what the app answers (same checks, same envelopes, same headers)
because they run the same core; only fault injection is left to the live server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio.to_thread
import httpx

from bbt.server._core import ServiceCore
from bbt.server.backend import Backend
from bbt.server.settings import ServerSettings

if TYPE_CHECKING:
    import respx

#: Base URL that :func:`mock_respx_router` answers on (any URL works with the transports).
MOCK_BASE_URL = "http://bbt-mock.test"


def _as_core(target: Backend | ServiceCore, settings: ServerSettings | None) -> ServiceCore:
    if isinstance(target, ServiceCore):
        return target
    return ServiceCore(target, settings if settings is not None else ServerSettings(api_keys=[]))


def _respond(core: ServiceCore, request: httpx.Request, body: bytes) -> httpx.Response:
    query = request.url.query.decode("ascii", "replace")
    answer = core.handle(request.method, request.url.path, dict(request.headers), body, query)
    return httpx.Response(answer.status, headers=answer.headers, content=answer.body)


class CoreTransport(httpx.BaseTransport):
    """A sync httpx transport that serves protocol v1 from a backend in this process.

    ``Client(MOCK_BASE_URL, transport=CoreTransport(MockBackend()))`` talks to the mock
    with no server and no threads. Settings default to no API keys (the environment is
    not read), so tests do not depend on ``BBT_SERVER_*`` variables.
    """

    def __init__(
        self, target: Backend | ServiceCore, settings: ServerSettings | None = None
    ) -> None:
        self.core = _as_core(target, settings)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return _respond(self.core, request, request.read())


class AsyncCoreTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`CoreTransport`; the backend runs in a worker thread."""

    def __init__(
        self, target: Backend | ServiceCore, settings: ServerSettings | None = None
    ) -> None:
        self.core = _as_core(target, settings)
        # One call at a time, as the app does by default: backends may assume it.
        self._limiter = anyio.CapacityLimiter(1)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        return await anyio.to_thread.run_sync(
            _respond, self.core, request, body, limiter=self._limiter
        )


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
    core = _as_core(target, settings)
    router = respx.MockRouter(base_url=base_url, assert_all_called=False)

    def serve(request: httpx.Request) -> httpx.Response:
        return _respond(core, request, request.read())

    router.route().mock(side_effect=serve)
    return router
