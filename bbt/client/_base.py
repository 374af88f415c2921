"""Everything the clients share that does no I/O.

:class:`Client` and :class:`AsyncClient` only differ in how they send a request; building
it, validating it before sending, splitting work over the server's limits, mapping
responses and transport failures to :mod:`bbt.errors`, the retry policy and usage
accounting all live here, so the two cannot drift. :class:`LocalClient` reuses the
pre-flight checks, the splitting and the accounting.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlencode, urlsplit, urlunsplit

import httpx
import numpy as np
from pydantic import BaseModel, SecretStr, ValidationError
from tenacity import RetryCallState, retry_if_exception
from tenacity.wait import wait_base

from bbt._version import __version__
from bbt.client._config import ClientSettings
from bbt.client._service import UsageStats
from bbt.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    InvalidRequestError,
    MalformedRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServerError,
)
from bbt.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    REQUEST_ID_HEADER,
    DecodedLogitsRequest,
    DType,
    EmbeddingsRequest,
    ErrorEnvelope,
    InitialPromptSpec,
    Limits,
    LogitsRequest,
    LogitsResponse,
    ModelInfo,
    ProjectionSpec,
    PromptCreateRequest,
    PromptLogitsRequest,
    ProtocolViolation,
    Tensor,
    TokenizeRequest,
    TokenizeResponse,
    check_embeddings_request,
    check_logits_request,
    check_prompt_create_request,
    check_prompt_logits_request,
    check_tokenize_request,
    encoded_size,
    is_prompt_id,
    speaks,
)
from bbt.protocol._registry import check_json_value, check_text

if TYPE_CHECKING:
    from bbt.client._sessions import SessionChunk

logger = logging.getLogger("bbt.client")

USER_AGENT = f"bbt/{__version__} python-httpx/{httpx.__version__}"
#: First backoff step in seconds; attempt k waits about BACKOFF_BASE * 2**(k-1), jittered.
BACKOFF_BASE = 0.5
#: Statuses worth another try: the same request may well succeed later.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
#: Room in a logits body for everything but the prompt tensor (JSON keys, model id, ids).
_BODY_SLACK = 4096

_WIRE_DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}

M = TypeVar("M", bound=BaseModel)
FloatArray = np.ndarray[Any, np.dtype[np.float32]]


# --------------------------------------------------------------------------- redaction


def redact(text: str, secret: SecretStr | None) -> str:
    """``text`` with every occurrence of the API key replaced, for anything we print."""
    if secret is None:
        return text
    key = secret.get_secret_value()
    return text.replace(key, "***") if key else text


# scheme://userinfo@ : greedy up to the last "@" before the path, query or fragment, as
# urllib splits it (a password may hold a raw "@").
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^\s/?#]*@")
# A query parameter whose value is a credential in every API that uses one.
_URL_SECRET_PARAM = re.compile(
    r"(?i)([?&](?:api[_-]?key|key|token|access[_-]?token|auth|password|passwd|secret|"
    r"sig|signature)=)[^&#\s]*"
)


def redact_url(text: str) -> str:
    """``text`` (a URL, or a message holding URLs) without credentials: any
    ``user:password@`` is dropped and the value of a query parameter that carries one
    (``key``, ``api_key``, ``token``, ``password``, ...) becomes ``***``.

    The one way a URL is recorded or shown: in reprs, error messages, log records, a run's
    manifest and ``prompt_ids.json``. The URL used for requests is left as given.
    """
    return _URL_SECRET_PARAM.sub(r"\1***", _URL_USERINFO.sub(r"\1", text))


def split_userinfo(url: str) -> tuple[str, httpx.BasicAuth | None]:
    """``url`` without its ``user:password@`` part, and those credentials as Basic auth.

    httpx turns a URL's userinfo into Basic auth by itself, but it also logs every request
    URL, userinfo included (logger ``httpx``, INFO). Handing it the bare URL and the same
    credentials as ``auth=`` sends the same requests and logs no password. A URL that
    cannot be split is returned as given, for httpx to refuse as before.
    """
    try:
        parts = urlsplit(url)
        if "@" not in parts.netloc:
            return url, None
        user, password = parts.username or "", parts.password or ""
    except ValueError:
        return url, None
    host = parts.netloc.rpartition("@")[2]
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    if not (user or password):
        return bare, None
    return bare, httpx.BasicAuth(unquote(user), unquote(password))


# --------------------------------------------------------------------------- error mapping


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date (RFC 9110)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # RFC 9110 dates are GMT; be lenient with servers that omit it
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _status_class(status: int) -> type[APIStatusError]:
    if status in (400, 413, 422):
        return BadRequestError
    if status == 401:
        return AuthenticationError
    if status == 403:
        return PermissionDeniedError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitError
    if status >= 500:
        return ServerError
    # 408 and any other status the protocol does not name: the generic status error.
    return APIStatusError


def status_error(response: httpx.Response, secret: SecretStr | None = None) -> APIStatusError:
    """The exception for an error response: its class from the status, details from the body."""
    status = response.status_code
    request_id = response.headers.get(REQUEST_ID_HEADER)
    error_type: str | None = None
    field: str | None = None
    try:
        envelope = ErrorEnvelope.model_validate_json(response.content)
    except ValidationError:
        # Not our envelope (a proxy's HTML page, say): keep a short excerpt for the reader.
        excerpt = response.text[:200].strip()
        message = response.reason_phrase or "error"
        if excerpt:
            message = f"{message}: {excerpt}"
    else:
        message = envelope.error.message
        error_type = envelope.error.type.value
        field = envelope.error.field
    message = redact(message, secret)
    cls = _status_class(status)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    if cls is RateLimitError:
        return RateLimitError(
            message,
            retry_after=retry_after,
            status_code=status,
            error_type=error_type,
            field=field,
            request_id=request_id,
        )
    exc = cls(
        message, status_code=status, error_type=error_type, field=field, request_id=request_id
    )
    if isinstance(exc, ServerError):
        exc.retry_after = retry_after
    return exc


#: httpx failures that mean *we* built a request it will not send (an illegal header value,
#: a URL without http:// or https://): the same request fails the same way every time, so
#: they are settings errors, never connection errors, and never retried.
LOCAL_FAILURES: tuple[type[httpx.HTTPError], ...] = (
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
)
# A bytes literal as h11 quotes an offending header value: b'...' or b"...", escapes and all.
_BYTES_LITERAL = re.compile(r"""\bb(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")


def transport_error(exc: httpx.HTTPError, secret: SecretStr | None = None) -> APIError:
    """Map an httpx failure to :mod:`bbt.errors`; the caller raises it ``from exc``."""
    if isinstance(exc, LOCAL_FAILURES):
        # h11 quotes the refused header value repr()-escaped, so a key with a control
        # character in it would slip past redact(): withhold every quoted value instead.
        text = _BYTES_LITERAL.sub("<value withheld>", str(exc))
        detail = redact_url(redact(f"{type(exc).__name__}: {text}", secret))
        return MalformedRequestError(
            f"the request could not be sent as built ({detail}); this is a settings "
            "problem, not a network one: the API key (BBT_API_KEY) must be one token of "
            "printable ASCII and the URL (BBT_BASE_URL) must start with http:// or https://"
        )
    detail = redact_url(redact(f"{type(exc).__name__}: {exc}", secret))
    if isinstance(exc, httpx.TimeoutException):
        return APITimeoutError(f"request timed out ({detail})")
    if isinstance(exc, httpx.DecodingError):
        return ProtocolError(f"response body could not be decoded ({detail})")
    return APIConnectionError(f"connection failed ({detail})")


def check_api_key(secret: SecretStr | None) -> None:
    """Refuse, before any request, a key that cannot travel in an ``Authorization`` header.

    A bearer token is one run of visible ASCII (RFC 6750); anything else (an inner space
    or newline, a non-ASCII letter) would make httpx fail on every request, or raise an
    encoding error before it. The message names no character of the key.
    """
    if secret is None:
        return
    if not all("!" <= ch <= "~" for ch in secret.get_secret_value()):
        raise ConfigurationError(
            "the API key (api_key= / BBT_API_KEY) holds characters an HTTP header cannot "
            "carry: spaces, control characters or non-ASCII letters; a key is one token of "
            "printable ASCII"
        )


def is_retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts, 408, 429 and 5xx; never another 4xx nor a bad body."""
    if isinstance(exc, APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(exc, APIStatusError) and (
        exc.status_code in RETRYABLE_STATUSES or exc.status_code >= 500
    )


#: The least Retry-After (s) that marks an answer as backpressure: "come back in a second or
#: more" is a server pacing its clients; "0" is no guidance, and retrying it outside the
#: max_retries count would be a hot loop.
MIN_BACKPRESSURE_RETRY_AFTER = 1.0


def is_backpressure(exc: BaseException | None) -> bool:
    """A 429 or 503 that says when to come back (``Retry-After`` of at least a second): the
    server is busy, not broken (e.g. its queue is full), so waiting as told should succeed."""
    return isinstance(exc, RateLimitError | ServerError) and (
        exc.status_code in (429, 503)
        and exc.retry_after is not None
        and exc.retry_after >= MIN_BACKPRESSURE_RETRY_AFTER
    )


class RetryStop:
    """When to give up: after ``max_retries`` ordinary failures (connection errors, timeouts,
    5xx, a 429/503 without ``Retry-After``). Backpressure answers (:func:`is_backpressure`)
    do not use up that count: they are retried as long as the waits they asked for add up to
    less than ``max_backpressure_wait`` seconds, so a client behind a full queue still gets
    its turn. ``max_retries=0`` turns every retry off. One instance per request."""

    def __init__(self, max_retries: int, max_backpressure_wait: float) -> None:
        self.max_retries = max_retries
        self.max_backpressure_wait = max_backpressure_wait
        self.failures = 0

    def __call__(self, retry_state: RetryCallState) -> bool:
        if self.max_retries == 0:
            return True
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if is_backpressure(exc) and self.max_backpressure_wait > 0:
            # idle_for: the waits scheduled so far (tenacity's sum, slept or not).
            return retry_state.idle_for >= self.max_backpressure_wait
        self.failures += 1
        return self.failures > self.max_retries


def server_retry_after(exc: BaseException | None) -> float | None:
    if isinstance(exc, RateLimitError | ServerError):
        return exc.retry_after
    return None


class RetryWait(wait_base):
    """Wait before retry k: the server's Retry-After if it sent one, else jittered backoff.

    Backoff is "equal jitter": half of ``base * 2**(k-1)`` fixed, half uniform, so clients
    that failed together spread out but never hammer straight back. Either way the wait is
    capped by ``max_wait``.
    """

    def __init__(
        self, max_wait: float, base: float = BACKOFF_BASE, rng: random.Random | None = None
    ) -> None:
        self.max_wait = max_wait
        self.base = base
        self.rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        hint = server_retry_after(outcome.exception() if outcome is not None else None)
        if hint is not None:
            return min(hint, self.max_wait)
        step = min(self.max_wait, self.base * 2.0 ** (retry_state.attempt_number - 1))
        return step / 2 + self.rng.uniform(0, step / 2)


# --------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class LogitsChunk:
    """One request's share of a P x B job: prompts [p0:p1] on texts [b0:b1]."""

    p0: int
    p1: int
    b0: int
    b1: int
    request: LogitsRequest
    decoded: DecodedLogitsRequest

    @property
    def sequences(self) -> int:
        """Prompt-text pairs the server runs for this request: what its time grows with."""
        return (self.p1 - self.p0) * (self.b1 - self.b0)

    @property
    def rows_sent(self) -> int:
        return self.p1 - self.p0


def _even_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``range(total)``, sizes differing by at most 1."""
    q, r = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + q + (1 if i < r else 0)
        bounds.append((start, end))
        start = end
    return bounds


def plan_grid(
    n_prompts: int,
    n_texts: int,
    limits: Limits,
    *,
    prompt_bytes: int = 0,
    text_bytes: int = 0,
) -> tuple[int, int]:
    """How many prompt groups and text groups to split a P x B job into.

    Picks the split with the fewest requests such that every request respects
    ``max_prompts_per_request``, ``max_texts_per_request``, ``max_sequences_per_request``
    and, given the encoded size of one prompt and an upper bound on one text's,
    ``max_body_bytes``. Ties go to fewer text groups (larger batches per request).
    """
    max_b = min(n_texts, limits.max_texts_per_request, limits.max_sequences_per_request)
    best: tuple[int, int] | None = None
    for b in range(max_b, 0, -1):
        p = min(n_prompts, limits.max_prompts_per_request, limits.max_sequences_per_request // b)
        if prompt_bytes:
            room = limits.max_body_bytes - _BODY_SLACK - b * text_bytes
            p = min(p, room // prompt_bytes)
        if p < 1:
            continue
        grid = (math.ceil(n_prompts / p), math.ceil(n_texts / b))
        if best is None or grid[0] * grid[1] < best[0] * best[1]:
            best = grid
    if best is None:
        raise InvalidRequestError(
            f"one prompt of {prompt_bytes} encoded bytes does not fit the server's "
            f"{limits.max_body_bytes}-byte request limit",
            field="prompts",
            error_type="payload_too_large",
        )
    return best


def _shift_field(field: str | None, offset: int) -> str | None:
    """Report a chunk's ``texts.i`` as the caller's index into the whole batch."""
    if field and field.startswith("texts."):
        head, _, rest = field[len("texts.") :].partition(".")
        if head.isdigit():
            return f"texts.{int(head) + offset}" + (f".{rest}" if rest else "")
    return field


def invalid(exc: ProtocolViolation | ValidationError, offset: int = 0) -> InvalidRequestError:
    """The local form of a request the server would reject; raised ``from exc``."""
    if isinstance(exc, ProtocolViolation):
        return InvalidRequestError(
            exc.message, field=_shift_field(exc.field, offset), error_type=exc.error_type.value
        )
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return InvalidRequestError(first["msg"], field=field)


def plan_logits(
    info: ModelInfo,
    prompts: np.ndarray[Any, Any],
    texts: Sequence[str],
    candidate_ids: Sequence[int],
    dtype: DType = "float32",
    min_requests: int = 1,
) -> list[LogitsChunk]:
    """Split and pre-flight check a logits job; every chunk passes ``check_logits_request``.

    All chunks are built and checked before anything is sent, so a mistake anywhere costs
    no request at all. ``min_requests`` asks for at least that many chunks (fan-out): the
    prompts are split further, never the texts, so each chunk is a whole share of the
    population on the whole batch.
    """
    arr = np.asarray(prompts)
    # Rank 4 is a deep prompt [P, L, n, H]; check_logits_request below refuses it, before
    # anything is sent, when the server does not advertise the capability.
    if arr.ndim not in (3, 4):
        raise InvalidRequestError(
            f"prompts must have shape [P, n, H] (or [P, L, n, H], deep); got shape "
            f"{list(arr.shape)}",
            field="prompts",
        )
    n_prompts = int(arr.shape[0])
    texts = list(texts)
    ids = [int(i) for i in candidate_ids]
    if n_prompts == 0 or not texts or not ids:
        raise InvalidRequestError(
            "need at least one prompt, one text and one candidate id",
            field="prompts" if n_prompts == 0 else "texts" if not texts else "candidate_ids",
        )
    prompt_bytes = encoded_size((1, *arr.shape[1:]), dtype)
    # Upper bound of one text in JSON: quotes, comma, and at most 6 bytes per character
    # (a \uXXXX escape); UTF-8 itself needs at most 4.
    text_bytes = max(6 * len(t) + 3 for t in texts)
    groups_p, groups_b = plan_grid(
        n_prompts, len(texts), info.limits, prompt_bytes=prompt_bytes, text_bytes=text_bytes
    )
    groups_p = max(groups_p, min(n_prompts, math.ceil(min_requests / groups_b)))
    chunks = []
    for p0, p1 in _even_bounds(n_prompts, groups_p):
        try:
            tensor = Tensor.from_numpy(arr[p0:p1], dtype)
        except ValueError as exc:  # e.g. values beyond float16's range
            raise InvalidRequestError(str(exc), field="prompts") from exc
        # What the server will decode, without decoding the base64 we just wrote.
        sent = np.asarray(arr[p0:p1], dtype=_WIRE_DTYPES[dtype]).astype(np.float32, copy=False)
        for b0, b1 in _even_bounds(len(texts), groups_b):
            try:
                req = LogitsRequest(
                    model=info.id, prompts=tensor, texts=texts[b0:b1], candidate_ids=ids
                )
                decoded = check_logits_request(req, info, prompts=sent)
            except ProtocolViolation as exc:
                raise invalid(exc, offset=b0) from exc
            except ValidationError as exc:
                raise invalid(exc) from exc
            chunks.append(LogitsChunk(p0, p1, b0, b1, req, decoded))
    return chunks


def plan_tokenize(
    info: ModelInfo, texts: Sequence[str], add_special_tokens: bool
) -> list[TokenizeRequest]:
    texts = list(texts)
    if not texts:
        raise InvalidRequestError("need at least one text", field="texts")
    size = info.limits.max_texts_per_request
    requests = []
    for start in range(0, len(texts), size):
        try:
            req = TokenizeRequest(
                model=info.id,
                texts=texts[start : start + size],
                add_special_tokens=add_special_tokens,
            )
            check_tokenize_request(req, info)
        except ProtocolViolation as exc:
            raise invalid(exc, offset=start) from exc
        except ValidationError as exc:
            raise invalid(exc) from exc
        requests.append(req)
    return requests


def plan_embed(info: ModelInfo, token_ids: Sequence[int]) -> list[EmbeddingsRequest]:
    ids = [int(i) for i in token_ids]
    if not ids:
        raise InvalidRequestError("need at least one token id", field="token_ids")
    size = info.limits.max_embedding_ids
    requests = []
    for start in range(0, len(ids), size):
        try:
            req = EmbeddingsRequest(model=info.id, token_ids=ids[start : start + size])
            check_embeddings_request(req, info)
        except ProtocolViolation as exc:
            if exc.field and exc.field.startswith("token_ids."):
                exc.field = f"token_ids.{int(exc.field.split('.')[1]) + start}"
            raise invalid(exc) from exc
        except ValidationError as exc:
            raise invalid(exc) from exc
        requests.append(req)
    return requests


def select_model(models: list[ModelInfo], wanted: str | None) -> ModelInfo:
    """The model named in the settings, or the first one served."""
    if not models:
        raise ConfigurationError("the service serves no models")
    if wanted is None:
        return models[0]
    for info in models:
        if info.id == wanted:
            return info
    served = ", ".join(repr(m.id) for m in models)
    raise ConfigurationError(f"model {wanted!r} is not served here; served: {served}")


def decode_tensor(tensor: Tensor, shape: list[int], what: str) -> FloatArray:
    """A response tensor as float32, after checking it has the shape the request implies."""
    if tensor.shape != shape:
        raise ProtocolError(f"{what} has shape {tensor.shape}; the request implies {shape}")
    try:
        return tensor.to_numpy().astype(np.float32, copy=False)
    except ValueError as exc:
        raise ProtocolError(f"{what} could not be decoded: {exc}") from exc


# --------------------------------------------------------------------------- the base client


@dataclass(frozen=True)
class RawBody:
    """A request body that is not a JSON model (e.g. a binary frame)."""

    content: bytes
    content_type: str


class BaseClient:
    """Settings, request building, response parsing, retry policy and usage: no I/O."""

    def __init__(self, settings: ClientSettings, *, rng: random.Random | None = None) -> None:
        self._settings = settings
        # Credentials in the URL travel as Basic auth, never as part of a URL that is
        # shown, logged or recorded (base_url, repr, httpx's request log, run directories).
        self._base_url, self._url_auth = split_userinfo(settings.require_base_url())
        check_api_key(settings.api_key)
        self._usage = UsageStats()
        # Fanned-out requests count their bytes and retries from several threads.
        self._usage_lock = threading.Lock()
        self._info: ModelInfo | None = None
        self._wait = RetryWait(settings.max_retry_wait, rng=rng)

    @property
    def settings(self) -> ClientSettings:
        return self._settings

    @property
    def usage(self) -> UsageStats:
        """Live running totals; take ``usage.copy()`` for a snapshot."""
        return self._usage

    @property
    def base_url(self) -> str:
        """The service root, without any ``user:password@`` the configured URL carried
        (those credentials are still sent, as Basic auth)."""
        return self._base_url

    def __repr__(self) -> str:
        key = "'***'" if self._settings.api_key is not None else "None"
        return (
            f"{type(self).__name__}(base_url={redact_url(self._base_url)!r}, "
            f"model={self._settings.model!r}, api_key={key})"
        )

    # ---------------------------------------------------------------- requests

    def _headers(self) -> dict[str, str]:
        headers = {
            PROTOCOL_HEADER: PROTOCOL_VERSION,
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
        }
        if self._settings.api_key is not None:
            headers["Authorization"] = f"Bearer {self._settings.api_key.get_secret_value()}"
        return headers

    def _timeout(self, sequences: int = 0) -> httpx.Timeout:
        """The timeout of a request that carries ``sequences`` logits sequences (0: any other)."""
        return self._settings.http_timeout(sequences)

    def _build_request(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        body: BaseModel | RawBody | None,
        sequences: int = 0,
    ) -> httpx.Request:
        headers = self._headers()
        content: bytes | None = None
        if isinstance(body, RawBody):
            content = body.content
            headers["Content-Type"] = body.content_type
        elif body is not None:
            # Serialise here, not through httpx's json=, so bytes_sent is the real body size.
            content = body.model_dump_json().encode()
            headers["Content-Type"] = "application/json"
        # The timeout travels with the request (its "timeout" extension), so every retry of
        # it gets the same allowance.
        return http.build_request(
            method, path, content=content, headers=headers, timeout=self._timeout(sequences)
        )

    @staticmethod
    def _api(path: str) -> str:
        return f"{API_PREFIX}{path}"

    # ---------------------------------------------------------------- responses

    def _count_sent(self, request: httpx.Request) -> None:
        with self._usage_lock:
            self._usage.requests += 1
            self._usage.bytes_sent += len(request.content)

    def _transport_error(self, exc: httpx.HTTPError) -> APIError:
        return transport_error(exc, self._settings.api_key)

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        # Bytes as they came off the wire (compressed, if the server compressed); a response
        # built in memory (a mock transport) never streamed, so count its body instead.
        with self._usage_lock:
            self._usage.bytes_received += response.num_bytes_downloaded or len(response.content)
        if not response.is_success:
            raise status_error(response, self._settings.api_key)
        request_id = response.headers.get(REQUEST_ID_HEADER)
        version = response.headers.get(PROTOCOL_HEADER)
        if not speaks(version):
            raise ProtocolError(
                f"server speaks protocol {version!r}; this client speaks {PROTOCOL_VERSION!r}",
                request_id=request_id,
            )
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            # A short summary: the full pydantic text can echo megabytes of base64.
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:3]
            )
            raise ProtocolError(
                redact(
                    f"response is not a valid {model.__name__}: {detail}", self._settings.api_key
                ),
                request_id=request_id,
            ) from exc

    # ---------------------------------------------------------------- retries

    def _retry_kwargs(self) -> dict[str, Any]:
        """Arguments for tenacity's Retrying/AsyncRetrying; the caller adds ``sleep``."""
        return {
            "stop": RetryStop(self._settings.max_retries, self._settings.max_backpressure_wait),
            "retry": retry_if_exception(is_retryable),
            "wait": self._wait,
            "before_sleep": self._before_retry,
            "reraise": True,
        }

    def _before_retry(self, retry_state: RetryCallState) -> None:
        with self._usage_lock:
            self._usage.retries += 1
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        # str(exc) is already redacted; the key is never formatted into a log record.
        logger.warning(
            "retrying %s after %s (attempt %d of %d, waiting %.2fs)",
            retry_state.args[0].url.path if retry_state.args else "request",
            type(exc).__name__ if exc else "error",
            retry_state.attempt_number + 1,
            self._settings.max_retries + 1,
            wait,
        )

    # ---------------------------------------------------------------- results

    def _logits_into(
        self, out: FloatArray, chunk: LogitsChunk | SessionChunk, resp: LogitsResponse
    ) -> None:
        """Place one chunk's answer at its place in ``out`` [P, B, C]; count its usage."""
        shape = [chunk.rows_sent, chunk.b1 - chunk.b0, out.shape[2]]
        got = decode_tensor(resp.logits, shape, "logits")
        out[chunk.p0 : chunk.p1, chunk.b0 : chunk.b1] = got[: chunk.p1 - chunk.p0]
        self._usage.sequences += resp.usage.sequences
        self._usage.tokens += resp.usage.tokens

    def _tokenize_result(
        self, requests: list[TokenizeRequest], responses: list[TokenizeResponse]
    ) -> TokenizeResponse:
        ids: list[list[int]] = []
        tokens: list[list[str]] = []
        for req, resp in zip(requests, responses, strict=True):
            if len(resp.ids) != len(req.texts) or len(resp.tokens) != len(req.texts):
                raise ProtocolError(
                    f"tokenize answered {len(resp.ids)} id lists and {len(resp.tokens)} token "
                    f"lists for {len(req.texts)} texts"
                )
            ids.extend(resp.ids)
            tokens.extend(resp.tokens)
        return TokenizeResponse(model=requests[0].model, ids=ids, tokens=tokens)

    def _embed_result(
        self, info: ModelInfo, requests: list[EmbeddingsRequest], tensors: list[Tensor]
    ) -> FloatArray:
        parts = [
            decode_tensor(t, [len(req.token_ids), info.hidden_size], "embeddings")
            for req, t in zip(requests, tensors, strict=True)
        ]
        return np.concatenate(parts, axis=0)


# --------------------------------------------------------------------------- prompt registry


def prompt_path(prompt_id: str) -> str:
    """The API path of a stored prompt; refuses, before any request, what is no prompt id
    (an id read from a run directory must not steer the request to another route)."""
    if not isinstance(prompt_id, str) or not is_prompt_id(prompt_id):
        raise InvalidRequestError(
            "not a prompt id (ids look like 'bp_' followed by letters, digits, '-' or '_')",
            field="prompt_id",
        )
    return f"{API_PREFIX}/prompts/{prompt_id}"


#: Most pages list_prompts() follows: a server keeps at most max_prompts (1000 by default)
#: per key, so this many pages means a server that hands out cursors without end.
MAX_LIST_PAGES = 10_000


def prompts_page_path(cursor: str | None, page_size: int | None) -> str:
    """``GET /v1/prompts`` for one page (1.2): a server from before pages ignores the query
    and answers every prompt with no ``next_cursor``, which ends the walk."""
    query: dict[str, str] = {}
    if page_size is not None:
        if page_size < 1:
            raise InvalidRequestError("page_size must be at least 1", field="limit")
        query["limit"] = str(page_size)
    if cursor is not None:
        query["cursor"] = cursor
    path = f"{API_PREFIX}/prompts"
    return f"{path}?{urlencode(query)}" if query else path


def next_page(cursor: str | None, seen: set[str]) -> str | None:
    """The cursor to fetch next, or None at the end; ProtocolError for a server that hands
    the same cursor back (following it would never end)."""
    if cursor is None:
        return None
    if cursor in seen or len(seen) >= MAX_LIST_PAGES:
        raise ProtocolError("the server's prompt list does not end (a cursor came back twice)")
    seen.add(cursor)
    return cursor


def check_free_form(label: str | None, recipe: dict[str, Any] | None) -> None:
    """Refuse, before any request, a label or recipe the server could not send back (a lone
    surrogate, NaN, nesting past any server's bound): it would refuse them with a 422, and
    some cannot even be written as the request's JSON."""
    try:
        if recipe is not None:
            check_json_value(recipe, "recipe")
        if label is not None:
            check_text(label, "label")
    except ProtocolViolation as exc:
        raise invalid(exc) from exc


def plan_prompt_store(
    info: ModelInfo,
    prompt: np.ndarray[Any, Any],
    label: str | None = None,
    recipe: dict[str, Any] | None = None,
) -> PromptCreateRequest:
    """A checked store request; the prompt travels as float32, so the server keeps (and
    digests) exactly the bytes the caller holds."""
    check_free_form(label, recipe)
    arr = np.asarray(prompt)
    try:
        tensor = Tensor.from_numpy(arr, "float32")
        req = PromptCreateRequest(model=info.id, prompt=tensor, label=label, recipe=recipe)
        check_prompt_create_request(req, info)
    except ProtocolViolation as exc:
        raise invalid(exc) from exc
    except ValidationError as exc:
        raise invalid(exc) from exc
    except ValueError as exc:  # from_numpy: a dtype it cannot encode
        raise InvalidRequestError(str(exc), field="prompt") from exc
    return req


def plan_projected_store(
    info: ModelInfo,
    projection: ProjectionSpec,
    z: np.ndarray[Any, Any],
    p0: InitialPromptSpec | None = None,
    label: str | None = None,
    recipe: dict[str, Any] | None = None,
) -> PromptCreateRequest:
    """A store request that names the prompt as A z + p0 (z uploads, not the prompt)."""
    check_free_form(label, recipe)
    arr = np.asarray(z)
    if arr.shape != (projection.dim,):
        raise InvalidRequestError(
            f"z must have shape [{projection.dim}] (the projection's d); got {list(arr.shape)}",
            field="z",
        )
    if not np.isfinite(arr).all():
        raise InvalidRequestError("z contains NaN or infinite values", field="z")
    if projection.hidden_size != info.hidden_size:
        raise InvalidRequestError(
            f"projection hidden_size {projection.hidden_size} does not match the model's "
            f"{info.hidden_size}",
            field="projection.hidden_size",
        )
    try:
        return PromptCreateRequest(
            model=info.id,
            projection=projection,
            z=Tensor.from_numpy(arr, "float32"),
            p0=p0,
            label=label,
            recipe=recipe,
        )
    except ValidationError as exc:
        raise invalid(exc) from exc


@dataclass(frozen=True)
class PromptLogitsChunk:
    """One request's share of a by-id logits job: texts [b0:b1]."""

    b0: int
    b1: int
    request: PromptLogitsRequest


def plan_prompt_logits(
    info: ModelInfo,
    texts: Sequence[str],
    candidate_ids: Sequence[int],
    dtype: DType = "float32",
) -> list[PromptLogitsChunk]:
    """Split a by-id job over the server's limits (texts only: the prompt does not travel)."""
    texts = list(texts)
    ids = [int(i) for i in candidate_ids]
    if not texts or not ids:
        raise InvalidRequestError(
            "need at least one text and one candidate id",
            field="texts" if not texts else "candidate_ids",
        )
    text_bytes = max(6 * len(t) + 3 for t in texts)
    _, groups_b = plan_grid(1, len(texts), info.limits, text_bytes=text_bytes)
    lim = info.limits
    room = max(1, (lim.max_body_bytes - _BODY_SLACK) // text_bytes)
    groups_b = max(groups_b, math.ceil(len(texts) / room))
    chunks = []
    for b0, b1 in _even_bounds(len(texts), groups_b):
        try:
            req = PromptLogitsRequest(
                model=info.id, texts=texts[b0:b1], candidate_ids=ids, output_dtype=dtype
            )
            check_prompt_logits_request(req, info)
        except ProtocolViolation as exc:
            raise invalid(exc, offset=b0) from exc
        except ValidationError as exc:
            raise invalid(exc) from exc
        chunks.append(PromptLogitsChunk(b0, b1, req))
    return chunks


def prompt_logits_into(
    out: FloatArray, chunk: PromptLogitsChunk, resp: LogitsResponse, usage: UsageStats
) -> None:
    """Place one by-id answer (logits [1, b, C]) into ``out`` [B, C]; count its usage."""
    shape = [1, chunk.b1 - chunk.b0, out.shape[1]]
    out[chunk.b0 : chunk.b1] = decode_tensor(resp.logits, shape, "logits")[0]
    usage.sequences += resp.usage.sequences
    usage.tokens += resp.usage.tokens
