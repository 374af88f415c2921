"""HTTP and transport failures as :mod:`bbt.errors`: one mapping for every client.

The class of an error answer comes from its status (:func:`status_class`); a codec reads
the details from the body (bbt's error envelope in :func:`status_error`, vLLM's in
``bbt.vllm``) and builds the exception with :func:`error_for_status`, which adds the
server's ``Retry-After``. :func:`transport_error` maps what httpx raises. Every message is
redacted: no API key or URL credential reaches an exception.
"""

from __future__ import annotations

import email.utils
import math
import re
import time

import httpx
from pydantic import SecretStr, ValidationError

from bbt.client.redaction import redact, redact_url
from bbt.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    MalformedRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServerError,
)
from bbt.protocol import REQUEST_ID_HEADER, ErrorEnvelope

__all__ = [
    "LOCAL_FAILURES",
    "error_for_status",
    "parse_retry_after",
    "status_class",
    "status_error",
    "transport_error",
]


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


def status_class(status: int) -> type[APIStatusError]:
    """The :mod:`bbt.errors` class of an HTTP error status."""
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
    """The exception for a bbt protocol error response: its class from the status, details
    from the body's error envelope."""
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
    return error_for_status(
        response,
        redact(message, secret),
        error_type=error_type,
        field=field,
        request_id=request_id,
    )


def error_for_status(
    response: httpx.Response,
    message: str,
    *,
    error_type: str | None = None,
    field: str | None = None,
    request_id: str | None = None,
) -> APIStatusError:
    """The exception for an error ``response`` whose details a codec has read (``message``
    already redacted): the class from the status, ``retry_after`` from its header."""
    status = response.status_code
    cls = status_class(status)
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
