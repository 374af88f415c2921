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
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ValidationError

from bbt.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    REQUEST_ID_HEADER,
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
    Tensor,
    TokenizeRequest,
    TokenizeResponse,
    check_embeddings_request,
    check_logits_request,
    check_tokenize_request,
)
from bbt.server._prompts import PromptEndpoints, PromptRoute, match_route, no_registry
from bbt.server.backend import Backend
from bbt.server.registry import PromptRegistry
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
}

M = TypeVar("M", bound=BaseModel)

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
    return APIFailure(STATUS_OF[exc.error_type], exc.error_type, exc.message, exc.field)


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


def protocol_headers(request_id: str) -> dict[str, str]:
    return {PROTOCOL_HEADER: PROTOCOL_VERSION, REQUEST_ID_HEADER: request_id}


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
        decoded = check_logits_request(req, self.info)
        out, usage = self.backend.logits(decoded.prompts, decoded.texts, decoded.candidate_ids)
        expected = (decoded.prompts.shape[0], len(decoded.texts), len(decoded.candidate_ids))
        if out.shape != expected:
            # A backend bug, not the caller's: surfaces as a 500 with the details logged.
            raise RuntimeError(f"backend returned logits of shape {out.shape}, not {expected}")
        if not np.isfinite(out).all():
            raise RuntimeError("backend returned non-finite logits")
        try:
            logits = Tensor.from_numpy(out, dtype=req.output_dtype)
        except ValueError as exc:  # logits beyond float16's range: ask for float32 instead
            raise ProtocolViolation(str(exc), field="output_dtype") from None
        return LogitsResponse(model=self.info.id, logits=logits, usage=usage)

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
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> CoreResponse:
        """Serve one request synchronously, exactly as the app would (minus fault injection).

        ``headers`` is matched case-insensitively. Used by ``bbt.testing``'s transports.
        """
        lower = {k.lower(): v for k, v in headers.items()}
        request_id = new_request_id(lower.get(REQUEST_ID_HEADER.lower()))
        try:
            payload = self._handle(method.upper(), path, lower, body)
            status, content, extra = 200, payload.model_dump_json().encode(), {}
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
            status, content, extra = (
                fail.status,
                fail.envelope.model_dump_json().encode(),
                fail.headers,
            )
        out_headers = {"content-type": "application/json", **extra, **protocol_headers(request_id)}
        return CoreResponse(status=status, body=content, headers=out_headers)

    def _handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> BaseModel:
        routes = self.routes()
        denied = self.auth_failure(path, headers.get("authorization"))
        if denied is not None:
            raise denied
        prompt_route = match_route(path)
        if prompt_route is not None:
            return self._handle_prompts(method, prompt_route, headers, body)
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
        return handler(self._parse_body(model, body))  # type: ignore[no-any-return]

    def _parse_body(self, model: type[M], body: bytes) -> M:
        if not body.strip():
            raise empty_body_failure()
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            raise APIFailure(
                400, ErrorType.invalid_request, "request body is not valid JSON"
            ) from None
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            raise validation_failure(exc.errors(include_input=False), strip=None) from None

    def _handle_prompts(
        self, method: str, route: PromptRoute, headers: Mapping[str, str], body: bytes
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
        if route.action == "collection":
            stored, _ = self.prompts.create(self._parse_body(PromptCreateRequest, body), tenant)
            return stored
        assert route.prompt_id is not None  # every other route names an id
        if route.action == "logits":
            req = self._parse_body(PromptLogitsRequest, body)
            return self.prompts.logits(route.prompt_id, req, tenant)
        if method == "GET":
            return self.prompts.get(route.prompt_id, tenant)
        return self.prompts.delete(route.prompt_id, tenant)


def is_api_path(path: str) -> bool:
    return path == API_PREFIX or path.startswith(API_PREFIX + "/")
