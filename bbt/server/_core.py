"""The framework-free heart of the server: validation, dispatch to a backend, error envelopes.

The FastAPI app (``bbt.server.app``) and the in-process transports of ``bbt.testing`` (a sync
httpx transport and a respx router) are thin shells over :class:`ServiceCore`, so all of
them validate, answer and fail the same way. Nothing here imports FastAPI.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import numpy as np
from pydantic import BaseModel, ValidationError

from bbt.protocol import (
    API_PREFIX,
    PROMPT_REGISTRY_CAPABILITY,
    PROTOCOL_HEADER,
    PROTOCOL_V1,
    REQUEST_ID_HEADER,
    SESSIONS_CAPABILITY,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorBody,
    ErrorEnvelope,
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
from bbt.protocol._frame import is_frame, split_frame
from bbt.protocol._validate import DecodedLogitsRequest
from bbt.server._prompts import PromptEndpoints, PromptRoute, match_route, no_registry
from bbt.server.backend import Backend
from bbt.server.registry import PromptRegistry
from bbt.server.sessions import SessionHost, session_host, tenant_of
from bbt.server.settings import ServerSettings

logger = logging.getLogger("bbt.server")

#: HTTP status of each error class (invalid_request may also be 400 for unparseable JSON).
STATUS_OF: dict[ErrorType, int] = {
    ErrorType.invalid_request: 422,
    ErrorType.authentication: 401,
    ErrorType.permission: 403,
    ErrorType.not_found: 404,
    ErrorType.payload_too_large: 413,
    ErrorType.rate_limit: 429,
    ErrorType.server_error: 500,
    ErrorType.unavailable: 503,
    ErrorType.session_not_found: 404,
}

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")


class APIFailure(Exception):  # noqa: N818 - an answer to send, not a crash
    """An error answer decided before or around the backend (status plus envelope)."""

    def __init__(
        self,
        status: int,
        error_type: ErrorType,
        message: str,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        body = ErrorBody(type=error_type, message=message, field=field)
        self.envelope = ErrorEnvelope(error=body)
        self.headers = dict(headers or {})


def violation_failure(exc: ProtocolViolation) -> APIFailure:
    # SessionsFull and the registry's StorageUnavailable say when to come back.
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(retry_after)} if isinstance(retry_after, int) else None
    return APIFailure(
        STATUS_OF[exc.error_type], exc.error_type, exc.message, exc.field, headers=headers
    )


def internal_failure() -> APIFailure:
    # The message is fixed on purpose: exception text can carry paths, data or secrets.
    return APIFailure(500, ErrorType.server_error, "internal server error; see the server log")


def validation_failure(errors: Sequence[Mapping[str, Any]], *, strip: str | None) -> APIFailure:
    """Map pydantic/FastAPI validation errors to one envelope: 400 for bad JSON, else 422.

    ``strip`` drops a leading location part (FastAPI prefixes body fields with "body").
    Messages are pydantic's own and never echo the offending input.
    """
    if not errors:
        return APIFailure(422, ErrorType.invalid_request, "invalid request")
    first = errors[0]
    loc = [str(p) for p in first.get("loc", ())]
    if strip is not None and loc and loc[0] == strip:
        loc = loc[1:]
    if any(e.get("type") == "json_invalid" for e in errors):
        return APIFailure(400, ErrorType.invalid_request, "request body is not valid JSON")
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    where = ".".join(loc) or None
    return APIFailure(422, ErrorType.invalid_request, f"{first.get('msg', 'invalid')}{more}", where)


def empty_body_failure() -> APIFailure:
    return APIFailure(400, ErrorType.invalid_request, "request body is empty; send a JSON object")


def new_request_id(offered: str | None) -> str:
    """Echo a client's well-formed request id, else make one."""
    if offered is not None and _REQUEST_ID_RE.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def protocol_headers(request_id: str, version: str = PROTOCOL_V1) -> dict[str, str]:
    """The headers of every answer; ``version`` is the one negotiated with the client."""
    return {PROTOCOL_HEADER: version, REQUEST_ID_HEADER: request_id}


#: /v1/sessions/{id}/logits and /v1/sessions/{id}: ids are token_urlsafe (URL-safe base64).
_SESSION_PATH = re.compile(re.escape(API_PREFIX) + r"/sessions(?:/([^/]+)(/logits)?)?")


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
                update={"capabilities": [*info.capabilities, PROMPT_REGISTRY_CAPABILITY]}
            )
        #: Projection sessions (protocol 1.1), or None when turned off.
        self.sessions: SessionHost | None = None
        if self.settings.sessions:
            self.sessions = session_host(backend, info, self.settings.session_limits())
            info = info.model_copy(
                update={"capabilities": [*info.capabilities, SESSIONS_CAPABILITY]}
            )
            self.sessions.info = info
        self.info: ModelInfo = info
        self._keys: list[bytes] = [k.get_secret_value().encode() for k in self.settings.api_keys]
        #: The prompt registry's endpoints (``/v1/prompts``), or None when it is off.
        self.prompts: PromptEndpoints | None = (
            PromptEndpoints(self, registry) if registry is not None else None
        )

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
        if content_length is None:
            return None
        try:
            declared = int(content_length)
        except ValueError:
            return APIFailure(400, ErrorType.invalid_request, "invalid Content-Length header")
        if declared < 0:
            return APIFailure(400, ErrorType.invalid_request, "invalid Content-Length header")
        if declared > self.max_body_bytes:
            return self.too_large_failure()
        return None

    def too_large_failure(self) -> APIFailure:
        return APIFailure(
            413,
            ErrorType.payload_too_large,
            f"request body exceeds {self.max_body_bytes} bytes; split the work into "
            "smaller requests",
        )

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

    # ------------------------------------------------------------------ plain dispatch

    def routes(self) -> dict[tuple[str, str], tuple[type[BaseModel] | None, Callable[..., Any]]]:
        """(method, path) -> (request model or None, handler)."""
        return {
            ("GET", f"{API_PREFIX}/models"): (None, self.models),
            ("POST", f"{API_PREFIX}/tokenize"): (TokenizeRequest, self.tokenize),
            ("POST", f"{API_PREFIX}/embeddings"): (EmbeddingsRequest, self.embeddings),
            ("POST", f"{API_PREFIX}/logits"): (LogitsRequest, self.logits),
            ("GET", "/healthz"): (None, self.health),
        }

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
            payload = self._handle(method.upper(), path, lower, body, query)
            status, content, extra = 200, wire_json(payload, version), {}
        except (APIFailure, ProtocolViolation, Exception) as exc:
            if isinstance(exc, ProtocolViolation):
                fail = violation_failure(exc)
            elif isinstance(exc, APIFailure):
                fail = exc
            else:
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

    def _handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes, query: str = ""
    ) -> BaseModel:
        routes = self.routes()
        denied = self.auth_failure(path, headers.get("authorization"))
        if denied is not None:
            raise denied
        prompt_route = match_route(path)
        if prompt_route is not None:
            return self._handle_prompts(method, prompt_route, headers, body, query)
        session = _SESSION_PATH.fullmatch(path)
        if session is not None:
            return self._handle_session(method, session, headers, body)
        allowed = sorted(m for (m, p) in routes if p == path)
        if not allowed:
            raise APIFailure(404, ErrorType.not_found, f"no route {path}")
        if method not in allowed:
            raise APIFailure(
                405,
                ErrorType.invalid_request,
                f"method {method} not allowed on {path}",
                headers={"Allow": ", ".join(allowed)},
            )
        too_big = self.content_length_failure(headers.get("content-length"))
        if too_big is not None:
            raise too_big
        if len(body) > self.max_body_bytes:
            raise self.too_large_failure()
        model, handler = routes[(method, path)]
        if model is None:
            result: BaseModel = handler()
            return result
        result = handler(_parse_body(model, body))
        return result

    def _handle_prompts(
        self,
        method: str,
        route: PromptRoute,
        headers: Mapping[str, str],
        body: bytes,
        query: str = "",
    ) -> BaseModel:
        """The registry's endpoints (``/v1/prompts...``), as the app serves them."""
        if method not in route.allowed:
            raise APIFailure(
                405,
                ErrorType.invalid_request,
                f"method {method} not allowed here",
                headers={"Allow": ", ".join(route.allowed)},
            )
        too_big = self.content_length_failure(headers.get("content-length"))
        if too_big is not None:
            raise too_big
        if len(body) > self.max_body_bytes:
            raise self.too_large_failure()
        if self.prompts is None:
            raise no_registry()
        tenant = self.prompts.tenant(self.presented_key(headers.get("authorization")))
        if route.action == "collection" and method == "GET":
            params = dict(parse_qsl(query, keep_blank_values=True))
            return self.prompts.list_page(tenant, params.get("limit"), params.get("cursor"))
        if route.action == "collection":
            stored, _ = self.prompts.create(_parse_body(PromptCreateRequest, body), tenant)
            return stored
        assert route.prompt_id is not None  # every other route names an id
        if route.action == "logits":
            req = _parse_body(PromptLogitsRequest, body)
            return self.prompts.logits(route.prompt_id, req, tenant)
        if method == "GET":
            return self.prompts.get(route.prompt_id, tenant)
        return self.prompts.delete(route.prompt_id, tenant)

    def _handle_session(
        self, method: str, match: re.Match[str], headers: Mapping[str, str], body: bytes
    ) -> BaseModel:
        opening = match.group(1) is None
        allowed = ["POST"] if opening or match.group(2) else ["DELETE"]
        if method not in allowed:
            raise APIFailure(
                405,
                ErrorType.invalid_request,
                f"method {method} not allowed on {match.group(0)}",
                headers={"Allow": ", ".join(allowed)},
            )
        too_big = self.content_length_failure(headers.get("content-length"))
        if too_big is not None:
            raise too_big
        if len(body) > self.max_body_bytes:
            raise self.too_large_failure()
        tenant = self.tenant(headers.get("authorization"))
        if opening:
            return self.open_session(tenant, _parse_body(SessionOpenRequest, body))
        session_id = unquote(match.group(1))
        if match.group(2):
            req, raw = parse_session_logits(body, headers.get("content-type"))
            return self.session_logits(tenant, session_id, req, raw)
        return self.close_session(tenant, session_id)


def parse_session_logits(
    body: bytes, content_type: str | None
) -> tuple[SessionLogitsRequest, bytes | None]:
    """A session logits body, JSON or a binary frame: (request, z's raw payload or None)."""
    if not is_frame(content_type):
        return _parse_body(SessionLogitsRequest, body), None
    try:
        header, payload = split_frame(body)
    except ProtocolViolation as exc:
        raise APIFailure(400, ErrorType.invalid_request, exc.message) from None
    req: SessionLogitsRequest = _parse_body(SessionLogitsRequest, header)
    return req, payload


def _parse_body(model: type[BaseModel], body: bytes) -> Any:
    if not body.strip():
        raise empty_body_failure()
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise APIFailure(400, ErrorType.invalid_request, "request body is not valid JSON") from None
    except ValueError:
        # Valid JSON that Python will not convert: an integer literal longer than
        # sys.get_int_max_str_digits() (4300). No field of the protocol takes such a
        # number, so it is the caller's error (422), not the server's (it was a 500).
        raise APIFailure(
            422,
            ErrorType.invalid_request,
            f"request body holds an integer of more than {sys.get_int_max_str_digits()} "
            "digits; no field accepts one",
        ) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failure(exc.errors(include_input=False), strip=None) from None


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")
