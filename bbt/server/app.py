"""The one app factory: protocol v1 over HTTP for any :class:`~bbt.server.backend.Backend`.

Layers, outermost first::

    _Guard          request id, protocol headers, access log, auth, body limit, catch-all 500
    FaultMiddleware only when faults are configured; /v1 routes only
    FastAPI         routing, JSON parsing into the protocol models, OpenAPI
    _Scheduler      the bounded queue in front of the backend (503 + Retry-After when full)
    ServiceCore     check_* before any compute, the backend call (in a worker thread)

Routes stay thin: each one hands its parsed request to :class:`ServiceCore`, which is
shared with ``bbt.testing``'s in-process transports.

Work whose client has gone is dropped: the guard watches each request's ``receive`` channel
for ``http.disconnect`` while the app runs. A request still waiting for the backend is taken
out of the queue and never computes; a backend call already running gets a stop check
(:mod:`bbt.server._cancel`) that the Hugging Face backend polls between forward chunks. The
client is gone, so nothing is answered; the access log records status 499 (nginx's "client
closed request") and ``app.state.scheduler.stats`` counts what was dropped.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from bbt.errors import ConfigurationError
from bbt.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_V1,
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
    PromptCreateRequest,
    PromptDeleted,
    PromptList,
    PromptLogitsRequest,
    ProtocolViolation,
    SessionClosed,
    SessionInfo,
    SessionLogitsRequest,
    SessionOpenRequest,
    StoredPrompt,
    TokenizeRequest,
    TokenizeResponse,
    negotiate,
    wire_json,
)
from bbt.protocol._frame import FRAME_CONTENT_TYPE
from bbt.server._cancel import Cancelled, stop_when
from bbt.server._core import (
    APIFailure,
    ServiceCore,
    empty_body_failure,
    internal_failure,
    new_request_id,
    parse_session_logits,
    protocol_headers,
    validation_failure,
    violation_failure,
)
from bbt.server._logsafe import loggable
from bbt.server._prompts import PROMPTS_PATH, PromptEndpoints, match_route, no_registry
from bbt.server.backend import Backend
from bbt.server.faults import FAULT_SCOPE_KEY, FaultConfig, FaultInjector, FaultMiddleware
from bbt.server.registry import PromptRegistry
from bbt.server.settings import ServerSettings

try:
    import anyio
    import anyio.to_thread
    from fastapi import FastAPI, Path, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import Response
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
#: Bounds of the Retry-After sent with a queue-full 503, in seconds.
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60


def _is_raw(value: object) -> bool:
    return isinstance(value, bytes | bytearray)


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


def _answer(model: Any, request: Request) -> Response:
    """A 200 in the protocol version negotiated with the client: fields newer than what it
    announced are left out, so a v1 client reads exactly what v1 servers sent."""
    return Response(wire_json(model, _version(request.scope)), media_type="application/json")


class ClientGone(Exception):  # noqa: N818 - an outcome, not a crash
    """The request's client disconnected; its work was dropped and nothing is answered."""


class ClientLink:
    """Whether one request's client is still connected, seen from the event loop and threads.

    The guard calls :meth:`mark_gone` when the server's ``receive`` yields
    ``http.disconnect``; that cancels every scope opened with :meth:`cancel_scope` (a request
    waiting for the backend leaves the queue) and sets :attr:`stop` (a running backend call
    polls it through :func:`bbt.server._cancel.stop_when`).
    """

    def __init__(self) -> None:
        self.gone = anyio.Event()
        self.stop = threading.Event()
        self._scopes: set[anyio.CancelScope] = set()

    def mark_gone(self) -> None:
        self.stop.set()
        self.gone.set()
        for scope in list(self._scopes):
            scope.cancel()

    @contextmanager
    def cancel_scope(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that is cancelled (at once, if already gone) on disconnect."""
        with anyio.CancelScope() as scope:
            if self.stop.is_set():
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)

    def receive_after(self, body: bytes) -> Callable[[], Any]:
        """The app's receive: the already-read body once, then ``http.disconnect`` when gone.

        The guard's watcher is the only reader of the server's own ``receive``: two readers
        would steal each other's messages.
        """
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        return receive


@dataclass
class SchedulerStats:
    """Counters of the queue in front of the backend (``app.state.scheduler.stats``)."""

    #: Backend calls that ran to the end.
    completed: int = 0
    #: Requests refused with 503 because the queue was full.
    rejected_queue_full: int = 0
    #: Requests whose client left while they waited: they never computed.
    dropped_queued: int = 0
    #: Backend calls stopped part-way (between forward chunks) because their client left.
    cancelled_running: int = 0
    #: Backend calls that finished after their client had left (answer discarded).
    finished_for_nobody: int = 0


class _Scheduler:
    """Admits at most ``max_concurrency + max_queue`` requests; runs them FIFO in threads.

    Not thread-safe on purpose: admission happens on the event loop only.
    """

    def __init__(self, max_concurrency: int, max_queue: int, rng: random.Random | None = None):
        # FIFO-fair: anyio's limiter wakes waiters in arrival order. Backend calls run in
        # worker threads, so the event loop keeps accepting and answering meanwhile.
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.admitted = 0
        self.stats = SchedulerStats()
        self._mean_call_s: float | None = None
        self._rng = rng or random.Random()

    @property
    def waiting(self) -> int:
        """Admitted requests not yet running."""
        return max(0, self.admitted - self.limiter.borrowed_tokens)

    def retry_after_s(self) -> int:
        """Seconds until the queue has drained, by the mean backend call time, with jitter.

        Jitter (a uniform factor in [0.5, 1]) spreads the clients refused together, so they
        do not all come back in the same second and meet a full queue again.
        """
        mean = self._mean_call_s if self._mean_call_s is not None else 1.0
        drain = mean * max(1, self.waiting) / self.max_concurrency
        wait = math.ceil(drain * self._rng.uniform(0.5, 1.0))
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, wait))

    def _record(self, seconds: float) -> None:
        # Exponentially weighted: follows a change of request sizes within a few calls.
        prev = self._mean_call_s
        self._mean_call_s = seconds if prev is None else 0.8 * prev + 0.2 * seconds

    async def run(self, fn: Callable[[Any], T], arg: Any, link: ClientLink | None) -> T:
        if self.admitted >= self.max_concurrency + self.max_queue:
            self.stats.rejected_queue_full += 1
            retry = self.retry_after_s()
            logger.warning(
                "queue full (%d running, %d waiting): answering 503, Retry-After %ds",
                self.limiter.borrowed_tokens,
                self.waiting,
                retry,
            )
            raise APIFailure(
                503,
                ErrorType.unavailable,
                f"server busy: {self.waiting} requests are already waiting for the model; "
                f"retry after {retry}s",
                headers={"Retry-After": str(retry)},
            )
        self.admitted += 1
        try:
            return await self._run(fn, arg, link)
        finally:
            self.admitted -= 1

    async def _run(self, fn: Callable[[Any], T], arg: Any, link: ClientLink | None) -> T:
        stop = link.stop if link is not None else None
        started = False
        timing = [0.0]

        def work(a: Any) -> T:
            nonlocal started
            # The disconnect may land between the limiter's grant and this thread starting.
            if stop is not None and stop.is_set():
                raise ClientGone
            started = True
            t0 = time.perf_counter()
            try:
                with stop_when(stop.is_set if stop is not None else None):
                    return fn(a)
            finally:
                timing[0] = time.perf_counter() - t0

        result: T | None = None
        with link.cancel_scope() if link is not None else anyio.CancelScope() as scope:
            try:
                result = await anyio.to_thread.run_sync(work, arg, limiter=self.limiter)
            except ClientGone:
                pass  # counted below: it never started
            except Cancelled:
                self.stats.cancelled_running += 1
                self._record(timing[0])
                logger.info("client gone: stopped its backend call part-way")
                raise ClientGone from None
        if not started:
            # Cancelled while waiting for the limiter, or refused at the thread's door.
            self.stats.dropped_queued += 1
            logger.info("client gone: dropped its queued request before it computed")
            raise ClientGone
        self._record(timing[0])
        if scope.cancel_called:
            self.stats.finished_for_nobody += 1
            raise ClientGone
        self.stats.completed += 1
        return result  # type: ignore[return-value]  # set whenever the call started and ended


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
    scheduler = _Scheduler(core.settings.max_concurrency, core.settings.max_queue)

    async def run(fn: Callable[[Any], T], arg: Any, request: Request) -> T:
        link = request.scope.get(CLIENT_SCOPE_KEY)
        return await scheduler.run(fn, arg, link if isinstance(link, ClientLink) else None)

    app = FastAPI(
        title="bbt LMaaS",
        summary="Black-box tuning protocol v1: masked-LM logits for soft prompts.",
        version=PROTOCOL_VERSION,
        responses=_ERROR_RESPONSES,
    )
    app.state.core = core
    app.state.scheduler = scheduler

    def openapi() -> dict[str, Any]:
        # The session logits body is parsed by hand (JSON or a binary frame), so FastAPI
        # does not list its schema by itself.
        if app.openapi_schema is None:
            doc = FastAPI.openapi(app)
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            ref = "#/components/schemas/{model}"
            schema = SessionLogitsRequest.model_json_schema(ref_template=ref)
            for name, sub in schema.pop("$defs", {}).items():
                schemas.setdefault(name, sub)
            schemas["SessionLogitsRequest"] = schema
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get(f"{API_PREFIX}/models", response_model=ModelList, tags=["v1"])
    async def list_models(request: Request) -> Response:
        """Describe the served model: sizes, mask token, embedding statistics, limits."""
        return _answer(core.models(), request)

    @app.post(f"{API_PREFIX}/tokenize", response_model=TokenizeResponse, tags=["v1"])
    async def tokenize(req: TokenizeRequest, request: Request) -> Response:
        """Split texts into the model's token ids and token strings."""
        return _answer(await run(core.tokenize, req, request), request)

    @app.post(f"{API_PREFIX}/embeddings", response_model=EmbeddingsResponse, tags=["v1"])
    async def embeddings(req: EmbeddingsRequest, request: Request) -> Response:
        """Look up input embeddings of token ids."""
        return _answer(await run(core.embeddings, req, request), request)

    @app.post(f"{API_PREFIX}/logits", response_model=LogitsResponse, tags=["v1"])
    async def logits(req: LogitsRequest, request: Request) -> Response:
        """Score P soft prompts on B texts: mask-position logits [P, B, C] of candidates."""
        return _answer(await run(core.logits, req, request), request)

    # Projection sessions (protocol 1.1): the server builds p = A z + p0 from a recipe.
    def tenant(request: Request) -> str:
        return core.tenant(request.headers.get("authorization"))

    session_id_path = Path(description="The id from opening the session.", max_length=128)

    @app.post(f"{API_PREFIX}/sessions", response_model=SessionInfo, tags=["sessions"])
    async def open_session(req: SessionOpenRequest, request: Request) -> Response:
        """Open a projection session: the server rebuilds A from the recipe, once (1.1)."""
        who = tenant(request)
        return _answer(await run(lambda r: core.open_session(who, r), req, request), request)

    @app.post(
        f"{API_PREFIX}/sessions/{{session_id}}/logits",
        response_model=LogitsResponse,
        tags=["sessions"],
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {"$ref": "#/components/schemas/SessionLogitsRequest"}
                    },
                    FRAME_CONTENT_TYPE: {
                        "schema": {
                            "type": "string",
                            "format": "binary",
                            "description": "uint32 LE header length, the JSON request with "
                            "z.data empty, then z's raw little-endian bytes "
                            "(docs/protocol.md).",
                        },
                    },
                },
            }
        },
    )
    async def session_logits(request: Request, session_id: str = session_id_path) -> Response:
        """Score z [P, d] through a session: the logits /v1/logits gives for A z + p0 (1.1).

        The body is JSON or a binary frame (no base64)."""
        who = tenant(request)
        body = await request.body()
        parsed = parse_session_logits(body, request.headers.get("content-type"))

        def call(p: tuple[SessionLogitsRequest, bytes | None]) -> LogitsResponse:
            return core.session_logits(who, session_id, p[0], p[1])

        return _answer(await run(call, parsed, request), request)

    @app.delete(
        f"{API_PREFIX}/sessions/{{session_id}}", response_model=SessionClosed, tags=["sessions"]
    )
    async def close_session(request: Request, session_id: str = session_id_path) -> Response:
        """Close a session and free its memory (1.1)."""
        return _answer(core.close_session(tenant(request), session_id), request)

    if core.prompts is not None:
        _add_registry_routes(app, core.prompts, run)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz(request: Request) -> Response:
        """Liveness: the server is up and which models it serves."""
        return _answer(core.health(), request)

    @app.exception_handler(APIFailure)
    async def _failure(request: Request, exc: APIFailure) -> Response:
        return _failure_response(exc, _version(request.scope))

    @app.exception_handler(ClientGone)
    async def _gone(_: Request, __: ClientGone) -> Response:
        # Nobody reads this answer (uvicorn discards sends after a disconnect); it only
        # gives the access log its status.
        return Response(status_code=CLIENT_CLOSED_STATUS)

    @app.exception_handler(ProtocolViolation)
    async def _violation(request: Request, exc: ProtocolViolation) -> Response:
        return _failure_response(violation_failure(exc), _version(request.scope))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
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
        if exc.status_code == 404 and core.prompts is None and match_route(request.url.path):
            fail = violation_failure(no_registry())  # as ServiceCore.handle answers it
        elif exc.status_code == 404:
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

    app.state.faults = None
    if faults is not None and faults.active:
        injector = FaultInjector(faults)
        app.add_middleware(FaultMiddleware, injector=injector, api_prefix=API_PREFIX)
        app.state.faults = injector
    app.add_middleware(_Guard, core=core)
    return app


def _add_registry_routes(
    app: FastAPI,
    ep: PromptEndpoints,
    run: Callable[[Callable[[Any], Any], Any, Request], Awaitable[Any]],
) -> None:
    """The prompt registry's routes (protocol 1.1), present only when the registry is on."""
    core = ep.core

    def tenant_of(request: Request) -> str:
        # The guard has accepted the key (or the server has none) before any route runs.
        return ep.tenant(core.presented_key(request.headers.get("authorization")))

    @app.post(PROMPTS_PATH, response_model=StoredPrompt, tags=["registry"])
    async def store_prompt(req: PromptCreateRequest, request: Request) -> Response:
        """Store a tuned prompt for this API key; answers its id (the same id for the same
        prompt stored again)."""
        tenant = tenant_of(request)
        if req.projection is not None:
            # Resolving p0 may call the backend (embeddings, tokenizer): take a turn in its
            # queue, as every backend call does.
            made: tuple[StoredPrompt, bool] = await run(
                lambda r: ep.create(r, tenant), req, request
            )
            return _answer(made[0], request)
        # SQLite work (an fsync per commit) off the event loop, but not behind the model's
        # queue: storing a tensor must not wait for forward passes.
        stored, _ = await anyio.to_thread.run_sync(ep.create, req, tenant)
        return _answer(stored, request)

    @app.get(PROMPTS_PATH, response_model=PromptList, tags=["registry"])
    async def list_prompts(
        request: Request,
        limit: str | None = Query(None, description="Prompts on this page (1.2)."),
        cursor: str | None = Query(None, description="next_cursor of the previous page (1.2)."),
    ) -> Response:
        """The prompts this API key stored, oldest first (metadata only), a page at a time."""
        tenant = tenant_of(request)
        page = await anyio.to_thread.run_sync(ep.list_page, tenant, limit, cursor)
        return _answer(page, request)

    @app.get(PROMPTS_PATH + "/{prompt_id}", response_model=StoredPrompt, tags=["registry"])
    async def get_prompt(prompt_id: str, request: Request) -> Response:
        """A stored prompt's metadata (never its tensor); 404 for another key's prompt."""
        tenant = tenant_of(request)
        return _answer(await anyio.to_thread.run_sync(ep.get, prompt_id, tenant), request)

    @app.delete(PROMPTS_PATH + "/{prompt_id}", response_model=PromptDeleted, tags=["registry"])
    async def delete_prompt(prompt_id: str, request: Request) -> Response:
        """Delete a stored prompt for good; 404 for another key's prompt."""
        tenant = tenant_of(request)
        return _answer(await anyio.to_thread.run_sync(ep.delete, prompt_id, tenant), request)

    @app.post(
        PROMPTS_PATH + "/{prompt_id}/logits", response_model=LogitsResponse, tags=["registry"]
    )
    async def prompt_logits(prompt_id: str, req: PromptLogitsRequest, request: Request) -> Response:
        """Score B texts under a stored prompt: logits [1, B, C], as POST /v1/logits."""
        tenant = tenant_of(request)
        answer = await run(lambda r: ep.logits(prompt_id, r, tenant), req, request)
        return _answer(answer, request)


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
            fail = self.core.auth_failure(scope["path"], headers.get("authorization"))
            fail = fail or self.core.content_length_failure(headers.get("content-length"))
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


__all__ = ["create_app"]
