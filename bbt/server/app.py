"""The one app factory: protocol v1 over HTTP for any :class:`~bbt.server.backend.Backend`.

Layers, outermost first::

    _Guard          request id, protocol headers, access log, auth, body limit, catch-all 500
    FaultMiddleware only when faults are configured; /v1 routes only
    FastAPI         routing, JSON parsing into the protocol models, OpenAPI
    ServiceCore     check_* before any compute, the backend call (in a worker thread)

Routes stay thin: each one hands its parsed request to :class:`ServiceCore`, which is
shared with ``bbt.testing``'s in-process transports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from typing import Any, TypeVar

from bbt.errors import ConfigurationError
from bbt.protocol import (
    API_PREFIX,
    PROTOCOL_VERSION,
    REQUEST_ID_HEADER,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorEnvelope,
    ErrorType,
    Health,
    LogitsRequest,
    LogitsResponse,
    ModelList,
    ProtocolViolation,
    TokenizeRequest,
    TokenizeResponse,
)
from bbt.server._core import (
    APIFailure,
    ServiceCore,
    empty_body_failure,
    internal_failure,
    new_request_id,
    protocol_headers,
    validation_failure,
    violation_failure,
)
from bbt.server.backend import Backend
from bbt.server.faults import FAULT_SCOPE_KEY, FaultConfig, FaultInjector, FaultMiddleware
from bbt.server.settings import ServerSettings

try:
    import anyio
    import anyio.to_thread
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, Response
    from starlette.exceptions import HTTPException as StarletteHTTPException
except ImportError as exc:  # pragma: no cover - exercised without the extra
    raise ConfigurationError(
        "the bbt server needs FastAPI and uvicorn: pip install 'bbt[server]'"
    ) from exc

logger = logging.getLogger("bbt.server")
access_logger = logging.getLogger("bbt.server.access")

T = TypeVar("T")
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]

_ERROR_STATUSES = (400, 401, 404, 405, 413, 422, 429, 500, 503)
_DESCRIPTIONS = {
    400: "Malformed JSON or headers",
    401: "Missing or wrong API key",
    404: "Unknown route or model",
    405: "Method not allowed",
    413: "Request body too large",
    422: "Request breaks the protocol or the model's limits",
    429: "Rate limited; see Retry-After",
    500: "Server fault",
    503: "Temporarily unavailable; retry",
}
_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorEnvelope, "description": _DESCRIPTIONS[s]} for s in _ERROR_STATUSES
}


def _is_raw(value: object) -> bool:
    return isinstance(value, bytes | bytearray)


def _failure_response(fail: APIFailure) -> JSONResponse:
    return JSONResponse(
        fail.envelope.model_dump(mode="json"), status_code=fail.status, headers=fail.headers
    )


def create_app(
    backend: Backend,
    settings: ServerSettings | None = None,
    faults: FaultConfig | None = None,
) -> FastAPI:
    """Build the protocol-v1 ASGI app serving ``backend``.

    ``settings`` defaults to :class:`ServerSettings` read from the environment;
    ``faults`` (off by default) injects failures into ``/v1`` routes for testing clients.
    The app's ``state`` holds ``core`` (the :class:`ServiceCore`) and ``faults`` (the
    :class:`FaultInjector`, or None).
    """
    core = ServiceCore(backend, settings)
    # FIFO-fair: anyio's limiter wakes waiters in arrival order. Backend calls run in
    # worker threads, so the event loop keeps accepting and answering meanwhile.
    limiter = anyio.CapacityLimiter(core.settings.max_concurrency)

    async def run(fn: Callable[[Any], T], arg: Any) -> T:
        return await anyio.to_thread.run_sync(fn, arg, limiter=limiter)

    app = FastAPI(
        title="bbt LMaaS",
        summary="Black-box tuning protocol v1: masked-LM logits for soft prompts.",
        version=PROTOCOL_VERSION,
        responses=_ERROR_RESPONSES,
    )
    app.state.core = core

    @app.get(f"{API_PREFIX}/models", response_model=ModelList, tags=["v1"])
    async def list_models() -> ModelList:
        """Describe the served model: sizes, mask token, embedding statistics, limits."""
        return core.models()

    @app.post(f"{API_PREFIX}/tokenize", response_model=TokenizeResponse, tags=["v1"])
    async def tokenize(req: TokenizeRequest) -> TokenizeResponse:
        """Split texts into the model's token ids and token strings."""
        return await run(core.tokenize, req)

    @app.post(f"{API_PREFIX}/embeddings", response_model=EmbeddingsResponse, tags=["v1"])
    async def embeddings(req: EmbeddingsRequest) -> EmbeddingsResponse:
        """Look up input embeddings of token ids."""
        return await run(core.embeddings, req)

    @app.post(f"{API_PREFIX}/logits", response_model=LogitsResponse, tags=["v1"])
    async def logits(req: LogitsRequest) -> LogitsResponse:
        """Score P soft prompts on B texts: mask-position logits [P, B, C] of candidates."""
        return await run(core.logits, req)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        """Liveness: the server is up and which models it serves."""
        return core.health()

    @app.exception_handler(ProtocolViolation)
    async def _violation(_: Request, exc: ProtocolViolation) -> Response:
        return _failure_response(violation_failure(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        errors = list(exc.errors())
        whole_body = [e for e in errors if tuple(e.get("loc", ())) == ("body",)]
        if any(e.get("type") == "missing" for e in whole_body):
            return _failure_response(empty_body_failure())
        if any(_is_raw(e.get("input")) for e in whole_body):
            # FastAPI hands over raw bytes when the body is not declared as JSON.
            return _failure_response(
                APIFailure(
                    400,
                    ErrorType.invalid_request,
                    "request body is not valid JSON (send Content-Type: application/json)",
                )
            )
        return _failure_response(validation_failure(errors, strip="body"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
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
        return _failure_response(fail)

    app.state.faults = None
    if faults is not None and faults.active:
        injector = FaultInjector(faults)
        app.add_middleware(FaultMiddleware, injector=injector, api_prefix=API_PREFIX)
        app.state.faults = injector
    app.add_middleware(_Guard, core=core)
    return app


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
        extra = [(k.encode(), v.encode()) for k, v in protocol_headers(request_id).items()]
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
            fail = self.core.auth_failure(scope["path"], headers.get("authorization"))
            fail = fail or self.core.content_length_failure(headers.get("content-length"))
            if fail is None:
                body, size = await self._read_body(receive)
                state["in"] = size
                if body is None and size <= self.core.max_body_bytes:
                    return  # the client went away
                if body is None:
                    fail = self.core.too_large_failure()
            if fail is not None or body is None:
                await _failure_response(fail or internal_failure())(scope, receive, send_wrapped)
            else:
                await self.app(scope, _replay(body, receive), send_wrapped)
        except Exception:
            # Log the traceback here, never send it: it can hold data or paths.
            logger.exception(
                "unhandled error serving %s %s (request %s)",
                scope.get("method"),
                scope["path"],
                request_id,
            )
            if not state["started"]:
                await _failure_response(internal_failure())(scope, receive, send_wrapped)
        finally:
            fault = scope.get(FAULT_SCOPE_KEY)
            status = "dropped" if fault == "drop" else state["status"]
            ms = (time.perf_counter() - started_at) * 1000
            access_logger.info(
                "%s %s %s %.1fms in=%d out=%d id=%s%s",
                scope.get("method"),
                scope["path"],
                status,
                ms,
                state["in"],
                state["out"],
                request_id,
                f" fault={fault}" if fault else "",
                extra={
                    "method": scope.get("method"),
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(ms, 3),
                    "bytes_in": state["in"],
                    "bytes_out": state["out"],
                    "request_id": request_id,
                    "fault": fault,
                },
            )

    async def _read_body(self, receive: Any) -> tuple[bytes | None, int]:
        """(body, bytes read); body is None on disconnect or once past the limit."""
        limit = self.core.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, size
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                # Chunked uploads carry no Content-Length: stop reading, buffer no more.
                return None, size
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks), size


def _replay(body: bytes, receive: Any) -> Any:
    """A receive callable that yields the already-read body once, then defers to the server."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        message: Message = await receive()
        return message

    return replay


__all__ = ["create_app"]
