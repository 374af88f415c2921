"""The server, in this process: transports and the in-process prompt registry.

What the server package offers a caller that wants its behaviour without a socket, as
httpx's ``ASGITransport`` does for an ASGI app:

- :class:`CoreTransport` / :class:`AsyncCoreTransport`: httpx transports that answer from
  the server's framework-free core, exactly what the app answers (same checks, envelopes
  and headers); ``bbt.testing`` re-exports them.
- :class:`LocalPromptHost` (made by :func:`prompt_host`): the prompt registry's calls for
  :class:`bbt.client.LocalClient`, run by the server's own code on a registry in this
  process.

Neither imports the client, and the client never imports this module (``bbt.client``
does not depend on the server): ``LocalClient(backend, prompt_host=prompt_host)`` is
handed it, and :mod:`bbt.inprocess` picks it when none is given. Importing this module
loads the server's core, never FastAPI.
"""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import httpx

from bbt.protocol import (
    LogitsResponse,
    PromptCreateRequest,
    PromptDeleted,
    PromptList,
    PromptLogitsRequest,
    StoredPrompt,
)
from bbt.protocol.shared import PromptTensor
from bbt.server._core import ServiceCore
from bbt.server.backend import Backend
from bbt.server.registry import PromptRegistry
from bbt.server.settings import ServerSettings

__all__ = [
    "AsyncCoreTransport",
    "CoreTransport",
    "LocalPromptHost",
    "ServiceCore",
    "as_core",
    "prompt_host",
    "respond",
]


def as_core(target: Backend | ServiceCore, settings: ServerSettings | None = None) -> ServiceCore:
    """``target`` itself, or a core serving it (no API keys unless ``settings`` say so)."""
    if isinstance(target, ServiceCore):
        return target
    return ServiceCore(target, settings if settings is not None else ServerSettings(api_keys=[]))


def respond(core: ServiceCore, request: httpx.Request, body: bytes) -> httpx.Response:
    """The core's answer to ``request`` (its body already read), as an httpx response."""
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
        self.core = as_core(target, settings)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return respond(self.core, request, request.read())


class AsyncCoreTransport(httpx.AsyncBaseTransport):
    """The async twin of :class:`CoreTransport`; the backend runs in a worker thread."""

    def __init__(
        self, target: Backend | ServiceCore, settings: ServerSettings | None = None
    ) -> None:
        self.core = as_core(target, settings)
        # One call at a time, as the app does by default: backends may assume it.
        self._limiter = anyio.CapacityLimiter(1)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        return await anyio.to_thread.run_sync(
            respond, self.core, request, body, limiter=self._limiter
        )


class LocalPromptHost:
    """The prompt registry's calls on ``registry`` (default: a store in memory, closed with
    this host), run by the server's code for ``backend``: a ``LocalClient``'s prompt host."""

    def __init__(self, backend: Backend, registry: PromptRegistry | None = None) -> None:
        self._owns_registry = registry is None
        self.registry = registry if registry is not None else PromptRegistry(":memory:")
        core = ServiceCore(backend, ServerSettings(api_keys=[]), self.registry)
        assert core.prompts is not None  # a registry was given
        self._endpoints = core.prompts

    def tenant(self, api_key: str | None) -> str:
        return self._endpoints.tenant(api_key)

    def create(self, req: PromptCreateRequest, tenant: str) -> tuple[StoredPrompt, bool]:
        return self._endpoints.create(req, tenant)

    def list_page(self, tenant: str, limit: str | None, cursor: str | None) -> PromptList:
        return self._endpoints.list_page(tenant, limit, cursor)

    def get(self, prompt_id: str, tenant: str) -> StoredPrompt:
        return self._endpoints.get(prompt_id, tenant)

    def delete(self, prompt_id: str, tenant: str) -> PromptDeleted:
        return self._endpoints.delete(prompt_id, tenant)

    def logits(self, prompt_id: str, req: PromptLogitsRequest, tenant: str) -> LogitsResponse:
        return self._endpoints.logits(prompt_id, req, tenant)

    def tensor(self, prompt_id: str, tenant: str) -> PromptTensor:
        return self._endpoints.tensor(prompt_id, tenant)

    def close(self) -> None:
        """Close the registry if this host made it (one it was given is its owner's)."""
        if self._owns_registry:
            self.registry.close()


def prompt_host(backend: Backend, registry: Any = None) -> LocalPromptHost:
    """A :class:`LocalPromptHost` (the signature ``LocalClient``'s ``prompt_host`` takes)."""
    return LocalPromptHost(backend, registry)
