"""Error answers and the request checks every transport shares, framework-free.

One place for what a request can fail on before any compute: the envelope of each error
class, an unreadable or oversized body, JSON that does not parse or does not validate.
:mod:`bbt.server._core` (the one router) raises these; the ASGI app and the in-process
transports only turn them into bytes.
"""

from __future__ import annotations

import json
import re
import sys
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from bbt.protocol import (
    PROTOCOL_HEADER,
    PROTOCOL_V1,
    REQUEST_ID_HEADER,
    ErrorBody,
    ErrorEnvelope,
    ErrorType,
    ProtocolViolation,
)

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


def known_failure(exc: BaseException) -> APIFailure | None:
    """The answer to an exception the protocol expects; None for a crash (log it, send 500)."""
    if isinstance(exc, APIFailure):
        return exc
    if isinstance(exc, ProtocolViolation):
        return violation_failure(exc)
    return None


def validation_failure(errors: Sequence[Mapping[str, Any]], *, strip: str | None) -> APIFailure:
    """Map pydantic validation errors to one envelope: 400 for bad JSON, else 422.

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


def not_json_failure() -> APIFailure:
    return APIFailure(
        400,
        ErrorType.invalid_request,
        "request body is not valid JSON (send Content-Type: application/json)",
    )


def new_request_id(offered: str | None) -> str:
    """Echo a client's well-formed request id, else make one."""
    if offered is not None and _REQUEST_ID_RE.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def protocol_headers(request_id: str, version: str = PROTOCOL_V1) -> dict[str, str]:
    """The headers of every answer; ``version`` is the one negotiated with the client."""
    return {PROTOCOL_HEADER: version, REQUEST_ID_HEADER: request_id}


def content_length_failure(content_length: str | None, limit: int) -> APIFailure | None:
    """A declared body size that is unreadable or over ``limit`` (checked before reading)."""
    if content_length is None:
        return None
    try:
        declared = int(content_length)
    except ValueError:
        return APIFailure(400, ErrorType.invalid_request, "invalid Content-Length header")
    if declared < 0:
        return APIFailure(400, ErrorType.invalid_request, "invalid Content-Length header")
    if declared > limit:
        return too_large_failure(limit)
    return None


def too_large_failure(limit: int) -> APIFailure:
    return APIFailure(
        413,
        ErrorType.payload_too_large,
        f"request body exceeds {limit} bytes; split the work into smaller requests",
    )


def is_json(content_type: str | None, *, strict: bool = False) -> bool:
    """Whether a body may be read as JSON: a JSON media type, or none when not ``strict``.

    The rule FastAPI applies (``application/json`` and ``application/*+json``; strict about
    a missing header), kept so that a body sent as, say, ``text/plain`` is refused alike
    by every transport.
    """
    if not content_type:
        return not strict
    media = content_type.split(";", 1)[0].strip().lower()
    main, _, sub = media.partition("/")
    return main == "application" and (sub == "json" or sub.endswith("+json"))


def parse_body(
    model: type[BaseModel],
    body: bytes,
    content_type: str | None = None,
    *,
    sniff: bool = True,
    strict: bool = False,
) -> Any:
    """Validate a JSON body into ``model``; raise the envelope of what is wrong with it.

    ``sniff`` True applies the rules FastAPI applied to the bodies it parsed (Content-Type,
    its validation messages); False is for the bodies always parsed by hand (a session's
    logits, JSON or a binary frame's header). ``strict`` is :func:`is_json`'s.
    """
    if not body.strip():
        raise empty_body_failure()
    if sniff and not is_json(content_type, strict=strict):
        raise not_json_failure()
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
        # from_attributes as FastAPI validates, so that the messages are its own word for word
        # (JSON holds no objects with attributes: nothing more is accepted).
        return model.model_validate(data, from_attributes=sniff)
    except ValidationError as exc:
        raise validation_failure(exc.errors(include_input=False), strip=None) from None
