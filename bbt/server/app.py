"""The one app factory: protocol v1 over HTTP for any :class:`~bbt.server.backend.Backend`.

Layers, outermost first::

    _Guard          request id, protocol headers, access log, auth, body limit, catch-all 500
    FaultMiddleware only when faults are configured; /v1 routes only
    _Router         hands the request to ServiceCore's router; runs the work it binds
    Scheduler       the bounded queue in front of the backend (503 + Retry-After when full)
    ServiceCore     routing, request checks, check_* before any compute, the backend call

:class:`~bbt.server._core.ServiceCore` is the one router: the in-process transports of
``bbt.testing`` call the same table and the same checks, so a client cannot tell them apart.
FastAPI remains for what it does well and the core install must not need: the OpenAPI
document (drawn from the same routing table, :mod:`bbt.server._openapi`), the docs UI and
the lifespan; requests for those pages are the only ones it routes.

Work whose client has gone is dropped (:mod:`bbt.server._scheduler`). The client is gone,
so nothing is answered; the access log records status 499 (nginx's "client closed
request") and ``app.state.scheduler.stats`` counts what was dropped.
"""

from __future__ import annotations

import logging
import time
from collections.abc import MutableMapping
from typing import Any

from bbt.errors import ConfigurationError
from bbt.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_V1,
    PROTOCOL_VERSION,
    REQUEST_ID_HEADER,
    ErrorEnvelope,
    ErrorType,
    negotiate,
    wire_json,
)
from bbt.server._core import Call, ServiceCore
from bbt.server._failures import (
    APIFailure,
    internal_failure,
    known_failure,
    new_request_id,
    protocol_headers,
)
from bbt.server._logsafe import loggable
from bbt.server._routes import slash_redirect
from bbt.server._scheduler import ClientGone, ClientLink, Scheduler, SchedulerStats
from bbt.server.backend import Backend
from bbt.server.faults import FAULT_SCOPE_KEY, FaultConfig, FaultInjector, FaultMiddleware
from bbt.server.registry import PromptRegistry
from bbt.server.settings import ServerSettings

try:
    import anyio
    import anyio.to_thread
    from fastapi import FastAPI, Request
    from fastapi.responses import RedirectResponse, Response
    from starlette.datastructures import URL
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from bbt.server._openapi import describe_routes
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ConfigurationError(
        "the bbt server needs FastAPI and uvicorn: pip install 'bbt[server]'"
    ) from exc

logger = logging.getLogger("bbt.server")
access_logger = logging.getLogger("bbt.server.access")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

_ERROR_STATUSES = (400, 401, 404, 405, 408, 413, 422, 429, 500, 503)
_DESCRIPTIONS = {
    400: "Malformed JSON or headers",
    401: "Missing or wrong API key",
    404: "Unknown route or model",
    405: "Method not allowed",
    408: "Request body not received in time (the connection is closed)",
    413: "Request body too large",
    422: "Request breaks the protocol or the model's limits",
    429: "Rate limited; see Retry-After",
    500: "Server fault",
    503: "Temporarily unavailable; retry",
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorEnvelope, "description": _DESCRIPTIONS[s]} for s in _ERROR_STATUSES
}
#: Scope key of the request's :class:`ClientLink` (set by the guard).
CLIENT_SCOPE_KEY = "bbt.client"
#: Scope key of the protocol version negotiated with the request's client (set by the guard).
VERSION_SCOPE_KEY = "bbt.protocol"
#: Status recorded (never sent: nobody is listening) for work dropped because its client left.
CLIENT_CLOSED_STATUS = 499


def _version(scope: Scope) -> str:
    version = scope.get(VERSION_SCOPE_KEY)
    return version if isinstance(version, str) else PROTOCOL_V1


def _failure_response(fail: APIFailure, version: str = PROTOCOL_V1) -> Response:
    return Response(
        wire_json(fail.envelope, version),
        status_code=fail.status,
        headers=fail.headers,
        media_type="application/json",
    )


def create_app(
    backend: Backend,
    settings: ServerSettings | None = None,
    faults: FaultConfig | None = None,
    registry: PromptRegistry | None = None,
) -> FastAPI:
    """Build the protocol-v1 ASGI app serving ``backend``.

    ``settings`` defaults to :class:`ServerSettings` read from the environment;
    ``faults`` (off by default) injects failures into ``/v1`` routes for testing clients.
    The app's ``state`` holds ``core`` (the :class:`ServiceCore`), ``scheduler`` (the
    queue in front of the backend; its ``stats`` count completed, refused and dropped work)
    and ``faults`` (the :class:`FaultInjector`, or None). ``registry`` (off by default)
    turns on the prompt registry's ``/v1/prompts`` endpoints over that store.
    """
    core = ServiceCore(backend, settings, registry)
    scheduler = Scheduler(core.settings.max_concurrency, core.settings.max_queue)
    app = FastAPI(
        title="bbt LMaaS",
        summary="Black-box tuning protocol v1: masked-LM logits for soft prompts.",
        version=PROTOCOL_VERSION,
        responses=_ERROR_RESPONSES,
    )
    app.state.core = core
    app.state.scheduler = scheduler
    describe_routes(app, registry=core.prompts is not None)
    app.add_exception_handler(StarletteHTTPException, _http_failure)  # type: ignore[arg-type]
    own = {app.openapi_url, app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url}
    app.add_middleware(_Router, core=core, scheduler=scheduler, fastapi_paths={p for p in own if p})
    app.state.faults = None
    if faults is not None and faults.active:
        injector = FaultInjector(faults)
        app.add_middleware(FaultMiddleware, injector=injector, api_prefix=API_PREFIX)
        app.state.faults = injector
    app.add_middleware(_Guard, core=core)
    return app


async def _http_failure(request: Request, exc: StarletteHTTPException) -> Response:
    """FastAPI's own pages (the document, the docs UI) fail in the protocol's envelope too."""
    if exc.status_code == 404:
        fail = APIFailure(404, ErrorType.not_found, f"no route {request.url.path}")
    elif exc.status_code == 405:
        fail = APIFailure(
            405,
            ErrorType.invalid_request,
            f"method {request.method} not allowed on {request.url.path}",
            headers=dict(exc.headers or {}),
        )
    elif exc.status_code < 500:
        fail = APIFailure(exc.status_code, ErrorType.invalid_request, str(exc.detail))
    else:
        fail = internal_failure()
    return _failure_response(fail, _version(request.scope))


class _Router:
    """Raw ASGI layer handing every request to :meth:`ServiceCore.bind`, the one router.

    Only FastAPI's own pages (``fastapi_paths``) and non-HTTP scopes (the lifespan) go on
    to FastAPI. The bound work runs as its route says: on the event loop, in a worker
    thread, or in the scheduler's queue in front of the backend.
    """

    def __init__(
        self, app: Any, core: ServiceCore, scheduler: Scheduler, fastapi_paths: set[str]
    ) -> None:
        self.app = app
        self.core = core
        self.scheduler = scheduler
        self.fastapi_paths = fastapi_paths

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] in self.fastapi_paths:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = await _read_all(receive)
        query = scope.get("query_string", b"").decode("latin-1")
        version = _version(scope)
        try:
            path = scope["path"]
            redirect = slash_redirect(path)
            if redirect is not None:
                await RedirectResponse(URL(scope={**scope, "path": redirect}))(scope, receive, send)
                return
            call = self.core.bind(scope["method"], path, headers, body, query, strict=True)
            result = await self._run(call, scope.get(CLIENT_SCOPE_KEY))
            response = Response(wire_json(result, version), media_type="application/json")
        except ClientGone:
            # Nobody reads this answer (uvicorn discards sends after a disconnect); it only
            # gives the access log its status.
            response = Response(status_code=CLIENT_CLOSED_STATUS)
        except Exception as exc:
            fail = known_failure(exc)
            if fail is None:
                raise  # a crash: the guard logs it and answers a bare 500
            response = _failure_response(fail, version)
        await response(scope, receive, send)

    async def _run(self, call: Call, link: object) -> Any:
        if call.mode == "inline":
            return call.fn()
        if call.mode == "thread":
            return await anyio.to_thread.run_sync(call.fn)
        client = link if isinstance(link, ClientLink) else None
        return await self.scheduler.run(lambda _: call.fn(), None, client)


async def _read_all(receive: Any) -> bytes:
    """The request body (the guard has read and bounded it already; this just collects)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


class _Guard:
    """Raw ASGI wrapper doing everything that must happen to every request, before parsing."""

    def __init__(self, app: Any, core: ServiceCore) -> None:
        self.app = app
        self.core = core

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started_at = time.perf_counter()
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = new_request_id(headers.get(REQUEST_ID_HEADER.lower()))
        version = negotiate(headers.get(PROTOCOL_HEADER.lower()))
        scope[VERSION_SCOPE_KEY] = version
        extra = [(k.encode(), v.encode()) for k, v in protocol_headers(request_id, version).items()]
        state = {"status": 0, "out": 0, "in": 0, "started": False}

        async def send_wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["started"] = True
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            elif message["type"] == "http.response.body":
                state["out"] += len(message.get("body", b""))
            await send(message)

        try:
            fail = self.core.admission_failure(scope["path"], headers)
            if fail is None:
                body, size = await self._read_body(receive, state)
                if body is None and size < 0:
                    fail = self._body_timeout_failure()
                elif body is None and size <= self.core.max_body_bytes:
                    return  # the client went away
                elif body is None:
                    fail = self.core.too_large_failure()
            if fail is not None or body is None:
                answer = _failure_response(fail or internal_failure(), version)
                await answer(scope, receive, send_wrapped)
            else:
                await self._call_app(scope, body, receive, send_wrapped)
        except Exception:
            # Log the traceback here, never send it: it can hold data or paths.
            logger.exception(
                "unhandled error serving %s %s (request %s)",
                loggable(scope.get("method")),
                loggable(scope["path"]),
                request_id,
            )
            if not state["started"]:
                await _failure_response(internal_failure(), version)(scope, receive, send_wrapped)
        finally:
            fault = scope.get(FAULT_SCOPE_KEY)
            status = "dropped" if fault == "drop" else state["status"]
            ms = (time.perf_counter() - started_at) * 1000
            # Escaped, in the line and in the structured fields alike: a formatter may print
            # either, and a decoded %0d%0a in the path must not start a forged line.
            method, path = loggable(scope.get("method")), loggable(scope["path"])
            access_logger.info(
                "%s %s %s %.1fms in=%d out=%d id=%s%s",
                method,
                path,
                status,
                ms,
                state["in"],
                state["out"],
                request_id,
                f" fault={fault}" if fault else "",
                extra={
                    "method": method,
                    "path": path,
                    "status": status,
                    "duration_ms": round(ms, 3),
                    "bytes_in": state["in"],
                    "bytes_out": state["out"],
                    "request_id": request_id,
                    "fault": fault,
                },
            )

    async def _call_app(self, scope: Scope, body: bytes, receive: Any, send: Any) -> None:
        """Run the app while a watcher task reads ``receive`` for the client's disconnect."""
        link = ClientLink()
        scope[CLIENT_SCOPE_KEY] = link

        async def watch() -> None:
            while True:
                try:
                    message = await receive()
                except Exception:  # some servers raise instead of sending http.disconnect
                    message = {"type": "http.disconnect"}
                if message["type"] == "http.disconnect":
                    link.mark_gone()
                    return

        error: Exception | None = None
        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            try:
                await self.app(scope, link.receive_after(body), send)
            except Exception as exc:  # re-raised below, outside the group (no ExceptionGroup)
                error = exc
            finally:
                tg.cancel_scope.cancel()
        if error is not None:
            raise error

    async def _read_body(self, receive: Any, state: dict[str, Any]) -> tuple[bytes | None, int]:
        """(body, bytes read); body is None on disconnect or once past the limit, and the
        size is -1 when the body did not arrive within ``body_timeout_s``.

        The deadline is for the whole body, not between chunks: a client trickling a byte
        at a time never stalls for long, yet would hold its connection (and the buffered
        part of up to ``max_body_bytes``) for as long as it liked. ``state["in"]`` counts
        the bytes read so far, for the access log whatever the outcome.
        """
        limit = self.core.max_body_bytes
        chunks: list[bytes] = []
        with anyio.move_on_after(self.core.settings.body_timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return None, state["in"]
                chunk = message.get("body", b"")
                state["in"] += len(chunk)
                if state["in"] > limit:
                    # Chunked uploads carry no Content-Length: stop reading, buffer no more.
                    return None, state["in"]
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks), state["in"]
        return None, -1

    def _body_timeout_failure(self) -> APIFailure:
        # 408 is retryable for bbt's client; closing the connection drops whatever of the
        # body is still on its way, which would otherwise be read as the next request.
        return APIFailure(
            408,
            ErrorType.invalid_request,
            f"request body not received within {self.core.settings.body_timeout_s:g}s; "
            "send the whole body at once",
            headers={"Connection": "close"},
        )


__all__ = ["CLIENT_CLOSED_STATUS", "SchedulerStats", "create_app"]
