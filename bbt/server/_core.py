"""The framework-free heart of the server: the one router, its checks, the backend calls.

Every request, whichever way it arrives, goes through :class:`ServiceCore`: the ASGI app
(``bbt.server.app``) hands it over after reading the body, and the in-process transports of
``bbt.testing`` call :meth:`ServiceCore.handle`. Routes come from one table
(:mod:`bbt.server._routes`) and the request checks (auth, body size, method, JSON) are each
written once (:mod:`bbt.server._failures`), so all transports validate, answer and fail the
same way. Nothing here imports FastAPI, so the core install can serve in-process.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import numpy as np
from pydantic import BaseModel

from bbt.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    REQUEST_ID_HEADER,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorType,
    Health,
    LogitsRequest,
    LogitsResponse,
    ModelInfo,
    ModelList,
    PromptCreateRequest,
    PromptLogitsRequest,
    ProtocolViolation,
    SessionClosed,
    SessionFeaturesRequest,
    SessionInfo,
    SessionLogitsRequest,
    SessionOpenRequest,
    Tensor,
    TokenizeRequest,
    TokenizeResponse,
    check_embeddings_request,
    check_logits_request,
    check_tokenize_request,
    negotiate,
    wire_json,
)
from bbt.protocol.deep_sessions import session_capabilities
from bbt.protocol.frame import is_frame, split_frame
from bbt.protocol.shared import REGISTRY_CAPABILITIES, lists_shared
from bbt.protocol.validate import DecodedLogitsRequest
from bbt.server._failures import (
    STATUS_OF,
    APIFailure,
    content_length_failure,
    empty_body_failure,
    internal_failure,
    known_failure,
    new_request_id,
    parse_body,
    protocol_headers,
    too_large_failure,
    validation_failure,
    violation_failure,
)
from bbt.server._features import features, score, session_features
from bbt.server._prompts import PromptEndpoints, no_registry
from bbt.server._routes import (
    MAX_SESSION_ID_CHARS,
    Mode,
    Route,
    allowed_methods,
    match,
    slash_redirect,
)
from bbt.server.backend import Backend
from bbt.server.registry import PromptRegistry
from bbt.server.sessions import SessionHost, session_host, tenant_of
from bbt.server.settings import ServerSettings

logger = logging.getLogger("bbt.server")


@dataclass(frozen=True)
class Incoming:
    """One admitted request as the router sees it (header names lower-case)."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes
    query: str
    params: Mapping[str, str]
    #: Whether a body without a Content-Type is refused (see :func:`parse_body`).
    strict: bool = False

    def parse(self, model: type[BaseModel]) -> Any:
        content_type = self.headers.get("content-type")
        return parse_body(model, self.body, content_type, strict=self.strict)


@dataclass(frozen=True)
class Call:
    """A checked request bound to its work: run ``fn`` as ``mode`` says, answer its result.

    The in-process transports just call ``fn``; the ASGI app runs it on the event loop, in
    a worker thread or in the bounded queue in front of the backend, by ``mode``.
    """

    fn: Callable[[], BaseModel]
    mode: Mode = "inline"


@dataclass
class CoreResponse:
    """A finished HTTP answer, independent of any framework."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class ServiceCore:
    """Everything the app does with a request, minus HTTP plumbing.

    The ``tokenize`` / ``embeddings`` / ``logits`` methods take parsed request models, run
    ``bbt.protocol.check_*`` before any compute, call the backend and return response
    models; they raise :class:`ProtocolViolation` for requests that break the protocol.
    They block (the backend computes), so async callers run them in a worker thread.
    """

    def __init__(
        self,
        backend: Backend,
        settings: ServerSettings | None = None,
        registry: PromptRegistry | None = None,
    ) -> None:
        self.backend = backend
        self.settings = settings if settings is not None else ServerSettings()
        info = backend.info
        if self.settings.max_body_bytes is not None:
            # Advertise the limit actually enforced, so clients split before hitting it.
            limits = info.limits.model_copy(update={"max_body_bytes": self.settings.max_body_bytes})
            info = info.model_copy(update={"limits": limits})
        if registry is not None:
            info = info.model_copy(
                update={"capabilities": [*info.capabilities, *REGISTRY_CAPABILITIES]}
            )
        #: Projection sessions (protocol 1.1), or None when turned off.
        self.sessions: SessionHost | None = None
        if self.settings.sessions:
            self.sessions = session_host(backend, info, self.settings.session_limits())
            info = info.model_copy(
                update={"capabilities": [*info.capabilities, *session_capabilities(info)]}
            )
            self.sessions.info = info
        self.info: ModelInfo = info
        self._keys: list[bytes] = [k.get_secret_value().encode() for k in self.settings.api_keys]
        #: The prompt registry's endpoints (``/v1/prompts``), or None when it is off.
        self.prompts: PromptEndpoints | None = (
            PromptEndpoints(self, registry) if registry is not None else None
        )
        #: Route endpoint name -> what binds a request to its work (see :meth:`bind`).
        self._binders: dict[str, Callable[[Route, Incoming], Call]] = {
            "list_models": lambda _, __: Call(self.models),
            "healthz": lambda _, __: Call(self.health),
            "tokenize": self._bind_plain(self.tokenize),
            "embeddings": self._bind_plain(self.embeddings),
            "logits": self._bind_plain(self.logits),
            "open_session": self._bind_open_session,
            "session_logits": self._bind_session_logits,
            "features": self._bind_plain(lambda req: features(self, req)),
            "session_features": self._bind_session_features,
            "score": self._bind_plain(lambda req: score(self, req)),
            "close_session": self._bind_close_session,
            "store_prompt": self._bind_store_prompt,
            "list_prompts": self._bind_list_prompts,
            "get_prompt": self._bind_prompt_item,
            "delete_prompt": self._bind_prompt_item,
            "prompt_tensor": self._bind_prompt_item,
            "prompt_logits": self._bind_prompt_logits,
        }

    @property
    def max_body_bytes(self) -> int:
        return self.info.limits.max_body_bytes

    # ------------------------------------------------------------------ guards

    def auth_failure(self, path: str, authorization: str | None) -> APIFailure | None:
        """None when ``path`` may be served to a caller presenting ``authorization``."""
        if not self._keys or not is_api_path(path):
            return None
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return APIFailure(
                401,
                ErrorType.authentication,
                "missing API key: send 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        presented = token.strip().encode()
        # Compare against every key (no early exit) so timing reveals neither key nor index.
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(presented, key)
        if not ok:
            return APIFailure(
                401,
                ErrorType.authentication,
                "invalid API key",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    def presented_key(self, authorization: str | None) -> str | None:
        """The bearer key of an authenticated request; None on a server without keys.

        Only for deriving a tenant (:meth:`PromptRegistry.tenant_of`); call it after
        :meth:`auth_failure` has accepted the request.
        """
        if not self._keys:
            return None
        _, _, token = (authorization or "").partition(" ")
        return token.strip()

    def content_length_failure(self, content_length: str | None) -> APIFailure | None:
        return content_length_failure(content_length, self.max_body_bytes)

    def too_large_failure(self) -> APIFailure:
        return too_large_failure(self.max_body_bytes)

    def admission_failure(self, path: str, headers: Mapping[str, str]) -> APIFailure | None:
        """What refuses a request before its body is read: the API key, then the declared
        size. ``headers`` has lower-case names."""
        denied = self.auth_failure(path, headers.get("authorization"))
        return denied or self.content_length_failure(headers.get("content-length"))

    # ------------------------------------------------------------------ endpoints

    def models(self) -> ModelList:
        return ModelList(data=[self.info])

    def health(self) -> Health:
        return Health(models=[self.info.id])

    def tokenize(self, req: TokenizeRequest) -> TokenizeResponse:
        check_tokenize_request(req, self.info)
        ids, tokens = self.backend.tokenize(list(req.texts), req.add_special_tokens)
        return TokenizeResponse(model=self.info.id, ids=ids, tokens=tokens)

    def embeddings(self, req: EmbeddingsRequest) -> EmbeddingsResponse:
        check_embeddings_request(req, self.info)
        emb = self.backend.embed(np.asarray(req.token_ids, dtype=np.int64))
        return EmbeddingsResponse(
            model=self.info.id, embeddings=Tensor.from_numpy(emb, dtype=req.dtype)
        )

    def logits(self, req: LogitsRequest) -> LogitsResponse:
        return self._score(check_logits_request(req, self.info), req.output_dtype)

    def _score(self, decoded: DecodedLogitsRequest, output_dtype: Any) -> LogitsResponse:
        out, usage = self.backend.logits(decoded.prompts, decoded.texts, decoded.candidate_ids)
        expected = (decoded.prompts.shape[0], len(decoded.texts), len(decoded.candidate_ids))
        if out.shape != expected:
            # A backend bug, not the caller's: surfaces as a 500 with the details logged.
            raise RuntimeError(f"backend returned logits of shape {out.shape}, not {expected}")
        if not np.isfinite(out).all():
            raise RuntimeError("backend returned non-finite logits")
        try:
            logits = Tensor.from_numpy(out, dtype=output_dtype)
        except ValueError as exc:  # logits beyond float16's range: ask for float32 instead
            raise ProtocolViolation(str(exc), field="output_dtype") from None
        return LogitsResponse(model=self.info.id, logits=logits, usage=usage)

    # ------------------------------------------------------------------ sessions (1.1)

    def tenant(self, authorization: str | None) -> str:
        """Who owns the sessions of a caller: a hash of its key ("" with auth off)."""
        if not self._keys:
            return ""
        _, _, token = (authorization or "").partition(" ")
        return tenant_of(token.strip())

    def _host(self) -> SessionHost:
        if self.sessions is None:
            raise APIFailure(
                404,
                ErrorType.not_found,
                "this server does not offer projection sessions (see the model's "
                "capabilities); send prompts to /v1/logits",
            )
        return self.sessions

    def open_session(self, tenant: str, req: SessionOpenRequest) -> SessionInfo:
        return self._host().open(tenant, req)

    def session_logits(
        self,
        tenant: str,
        session_id: str,
        req: SessionLogitsRequest,
        raw: bytes | None = None,
    ) -> LogitsResponse:
        """``raw`` is z's payload when the body was a binary frame."""
        decoded = self._host().decode(tenant, session_id, req, raw)
        return self._score(decoded, req.output_dtype)

    def close_session(self, tenant: str, session_id: str) -> SessionClosed:
        return self._host().close(tenant, session_id)

    # ------------------------------------------------------------------ routing

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, query: str = ""
    ) -> CoreResponse:
        """Serve one request synchronously, exactly as the app would (minus fault injection).

        ``headers`` is matched case-insensitively; ``query`` is the URL's query string
        (``GET /v1/prompts`` reads its page from it). Used by ``bbt.testing``'s transports.
        """
        lower = {k.lower(): v for k, v in headers.items()}
        request_id = new_request_id(lower.get(REQUEST_ID_HEADER.lower()))
        version = negotiate(lower.get(PROTOCOL_HEADER.lower()))
        try:
            refused = self.admission_failure(path, lower)
            if refused is not None:
                raise refused
            if len(body) > self.max_body_bytes:
                raise self.too_large_failure()
            # The app redirects /v1/models/ to /v1/models; answer what following it gives.
            path = slash_redirect(path) or path
            payload = self.bind(method.upper(), path, lower, body, query).fn()
            status, content, extra = 200, wire_json(payload, version), {}
        except Exception as exc:
            fail = known_failure(exc)
            if fail is None:
                logger.exception(
                    "unhandled error serving %s %s (request %s)", method, path, request_id
                )
                fail = internal_failure()
            status, content, extra = (fail.status, wire_json(fail.envelope, version), fail.headers)
        out_headers = {
            "content-type": "application/json",
            **extra,
            **protocol_headers(request_id, version),
        }
        return CoreResponse(status=status, body=content, headers=out_headers)

    def bind(
        self,
        method: str,
        path: str,
        headers: Mapping[str, str],
        body: bytes,
        query: str = "",
        *,
        strict: bool = False,
    ) -> Call:
        """Route one admitted request (see :meth:`admission_failure`; the body is read and
        within the limit) to its work, checking and parsing it on the way.

        Raises :class:`APIFailure` or :class:`ProtocolViolation` for a request to refuse:
        an unknown path (404), a method the path does not take (405), a body that does not
        parse or validate. Nothing touches the backend until the returned call runs.
        ``strict`` refuses a JSON body sent without a Content-Type, as an HTTP server must
        (FastAPI did); in-process callers may leave the header out.
        """
        routes, params = match(path)
        if not routes:
            raise APIFailure(404, ErrorType.not_found, f"no route {path}")
        if self.prompts is None and all(r.registry for r in routes):
            raise no_registry()
        route = next((r for r in routes if r.method == method), None)
        if route is None:
            raise APIFailure(
                405,
                ErrorType.invalid_request,
                f"method {method} not allowed on {path}",
                headers={"Allow": ", ".join(allowed_methods(routes))},
            )
        incoming = Incoming(method, path, headers, body, query, params, strict)
        return self._binders[route.endpoint](route, incoming)

    def _bind_plain(self, handler: Callable[[Any], BaseModel]) -> Callable[[Route, Incoming], Call]:
        def bind(route: Route, incoming: Incoming) -> Call:
            assert route.body is not None  # every plain POST route declares its body
            req = incoming.parse(route.body)
            return Call(lambda: handler(req), route.mode)

        return bind

    def _bind_open_session(self, route: Route, incoming: Incoming) -> Call:
        tenant = self.tenant(incoming.headers.get("authorization"))
        req = incoming.parse(SessionOpenRequest)
        return Call(lambda: self.open_session(tenant, req), route.mode)

    def _bind_session_logits(self, route: Route, incoming: Incoming) -> Call:
        session_id = _session_id(incoming)
        tenant = self.tenant(incoming.headers.get("authorization"))
        req, raw = parse_session_logits(incoming.body, incoming.headers.get("content-type"))
        return Call(lambda: self.session_logits(tenant, session_id, req, raw), route.mode)

    def _bind_session_features(self, route: Route, incoming: Incoming) -> Call:
        session_id = _session_id(incoming)
        tenant = self.tenant(incoming.headers.get("authorization"))
        body, content_type = incoming.body, incoming.headers.get("content-type")
        req, raw = parse_session_logits(body, content_type, SessionFeaturesRequest)
        return Call(lambda: session_features(self, tenant, session_id, req, raw), route.mode)

    def _bind_close_session(self, route: Route, incoming: Incoming) -> Call:
        session_id = _session_id(incoming)
        tenant = self.tenant(incoming.headers.get("authorization"))
        return Call(lambda: self.close_session(tenant, session_id), route.mode)

    def _registry(self, incoming: Incoming) -> tuple[PromptEndpoints, str]:
        """The registry's endpoints and the caller's tenant (the key is accepted already)."""
        assert self.prompts is not None  # bind() answers no_registry() before this
        key = self.presented_key(incoming.headers.get("authorization"))
        return self.prompts, self.prompts.tenant(key)

    def _bind_store_prompt(self, route: Route, incoming: Incoming) -> Call:
        ep, tenant = self._registry(incoming)
        req = incoming.parse(PromptCreateRequest)
        # Resolving p0 from a projection may call the backend (embeddings, tokenizer): it
        # takes a turn in the backend's queue. Storing a tensor is SQLite work only, and
        # must not wait behind forward passes.
        mode: Mode = "queue" if req.projection is not None else route.mode
        return Call(lambda: ep.create(req, tenant)[0], mode)

    def _bind_list_prompts(self, route: Route, incoming: Incoming) -> Call:
        ep, tenant = self._registry(incoming)
        page = dict(parse_qsl(incoming.query, keep_blank_values=True))
        limit, cursor = page.get("limit"), page.get("cursor")
        shared = lists_shared(negotiate(incoming.headers.get(PROTOCOL_HEADER.lower())))
        return Call(lambda: ep.list_page(tenant, limit, cursor, shared), route.mode)

    def _bind_prompt_item(self, route: Route, incoming: Incoming) -> Call:
        ep, tenant = self._registry(incoming)
        prompt_id = incoming.params["prompt_id"]
        action = {"get_prompt": ep.get, "prompt_tensor": ep.tensor}.get(route.endpoint, ep.delete)
        return Call(lambda: action(prompt_id, tenant), route.mode)

    def _bind_prompt_logits(self, route: Route, incoming: Incoming) -> Call:
        ep, tenant = self._registry(incoming)
        prompt_id = incoming.params["prompt_id"]
        req = incoming.parse(PromptLogitsRequest)
        return Call(lambda: ep.logits(prompt_id, req, tenant), route.mode)


def _session_id(incoming: Incoming) -> str:
    session_id = incoming.params["session_id"]
    if len(session_id) > MAX_SESSION_ID_CHARS:
        # Word for word what FastAPI answered when it validated this path parameter.
        raise APIFailure(
            422,
            ErrorType.invalid_request,
            f"String should have at most {MAX_SESSION_ID_CHARS} characters",
            "path.session_id",
        )
    return session_id


def parse_session_logits(
    body: bytes, content_type: str | None, model: type[BaseModel] = SessionLogitsRequest
) -> tuple[Any, bytes | None]:
    """A session logits body (or, with ``model``, another session body carrying z: the
    features one), JSON or a binary frame: (request, z's raw payload or None)."""
    if not is_frame(content_type):
        # Read as JSON whatever the declared type: this body was always parsed by hand.
        return parse_body(model, body, sniff=False), None
    try:
        header, payload = split_frame(body)
    except ProtocolViolation as exc:
        raise APIFailure(400, ErrorType.invalid_request, exc.message) from None
    return parse_body(model, header, sniff=False), payload


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")


__all__ = [
    "STATUS_OF",
    "APIFailure",
    "Call",
    "CoreResponse",
    "ServiceCore",
    "empty_body_failure",
    "internal_failure",
    "new_request_id",
    "parse_session_logits",
    "protocol_headers",
    "validation_failure",
    "violation_failure",
]
