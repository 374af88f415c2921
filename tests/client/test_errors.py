"""Every mapping from a response or transport failure to bbt.errors."""

from __future__ import annotations

import email.utils
from collections.abc import Callable

import httpx
import pytest

from bbt.client import Client
from bbt.client._base import parse_retry_after
from bbt.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    ProtocolError,
    RateLimitError,
    ServerError,
)
from bbt.protocol import ErrorType

from .fakes import FakeService, error_response

MakeClient = Callable[..., Client]


@pytest.mark.parametrize(
    ("status", "error_type", "cls"),
    [
        (400, ErrorType.invalid_request, BadRequestError),
        (413, ErrorType.payload_too_large, BadRequestError),
        (422, ErrorType.invalid_request, BadRequestError),
        (401, ErrorType.authentication, AuthenticationError),
        (403, ErrorType.permission, PermissionDeniedError),
        (404, ErrorType.not_found, NotFoundError),
        (429, ErrorType.rate_limit, RateLimitError),
        (500, ErrorType.server_error, ServerError),
        (503, ErrorType.unavailable, ServerError),
    ],
)
def test_status_maps_to_its_exception_with_envelope_details(
    make_client: MakeClient,
    service: FakeService,
    status: int,
    error_type: ErrorType,
    cls: type[APIStatusError],
) -> None:
    response = error_response(status, error_type, "it went wrong", "texts.2")
    response.headers["X-Request-ID"] = "req-42"
    service.faults.append(response)
    client = make_client(max_retries=0)
    with pytest.raises(cls) as info:
        client.health()
    exc = info.value
    assert type(exc) is cls
    assert exc.status_code == status
    assert exc.error_type == error_type.value
    assert exc.message == "it went wrong"
    assert exc.field == "texts.2"
    assert exc.request_id == "req-42"
    assert str(exc) == f"{status} {error_type.value}: it went wrong (field: texts.2)"


@pytest.mark.parametrize("status", [405, 408, 409])
def test_unnamed_status_is_a_plain_status_error(
    make_client: MakeClient, service: FakeService, status: int
) -> None:
    service.faults.append(httpx.Response(status, text="nope"))
    with pytest.raises(APIStatusError) as info:
        make_client(max_retries=0).health()
    assert type(info.value) is APIStatusError
    assert info.value.status_code == status


def test_body_that_is_not_an_envelope_keeps_an_excerpt(
    make_client: MakeClient, service: FakeService
) -> None:
    service.faults.append(httpx.Response(502, text="<html>Bad gateway from the proxy</html>"))
    with pytest.raises(ServerError) as info:
        make_client(max_retries=0).health()
    assert info.value.error_type is None
    assert "Bad gateway from the proxy" in info.value.message


def test_rate_limit_carries_retry_after(make_client: MakeClient, service: FakeService) -> None:
    service.faults.append(error_response(429, ErrorType.rate_limit, "slow", **{"Retry-After": "7"}))
    with pytest.raises(RateLimitError) as info:
        make_client(max_retries=0).health()
    assert info.value.retry_after == 7.0


def test_unavailable_carries_retry_after(make_client: MakeClient, service: FakeService) -> None:
    service.faults.append(
        error_response(503, ErrorType.unavailable, "busy", **{"Retry-After": "2.5"})
    )
    with pytest.raises(ServerError) as info:
        make_client(max_retries=0).health()
    assert info.value.retry_after == 2.5


@pytest.mark.parametrize(
    ("raised", "cls"),
    [
        (httpx.ConnectError("refused"), APIConnectionError),
        (httpx.RemoteProtocolError("peer closed connection"), APIConnectionError),
        (httpx.ReadError("reset"), APIConnectionError),
        (httpx.ConnectTimeout("slow connect"), APITimeoutError),
        (httpx.ReadTimeout("slow read"), APITimeoutError),
        (httpx.PoolTimeout("no connection"), APITimeoutError),
        (httpx.DecodingError("bad gzip"), ProtocolError),
    ],
)
def test_transport_failures_are_wrapped_with_cause(
    make_client: MakeClient, service: FakeService, raised: Exception, cls: type[Exception]
) -> None:
    service.faults.append(raised)
    with pytest.raises(cls) as info:
        make_client(max_retries=0).health()
    assert type(info.value) is cls
    assert info.value.__cause__ is raised


def test_timeouts_are_connection_errors_too() -> None:
    assert issubclass(APITimeoutError, APIConnectionError)


@pytest.mark.parametrize(
    "body",
    [
        b"not json at all",
        b'{"status": "ok"}',  # models missing
        b'{"status": "ok", "models": [], "surprise": 1}',  # extra field
    ],
)
def test_invalid_success_body_is_a_protocol_error(
    make_client: MakeClient, service: FakeService, body: bytes
) -> None:
    service.faults.append(httpx.Response(200, content=body))
    with pytest.raises(ProtocolError) as info:
        make_client(max_retries=0).health()
    assert "Health" in str(info.value)
    assert info.value.__cause__ is not None


def test_other_protocol_version_is_a_protocol_error(
    make_client: MakeClient, service: FakeService
) -> None:
    service.faults.append(
        httpx.Response(200, json={"status": "ok", "models": []}, headers={"X-BBT-Protocol": "2"})
    )
    with pytest.raises(ProtocolError, match="protocol '2'"):
        make_client(max_retries=0).health()


def test_logits_with_wrong_shape_is_a_protocol_error(
    make_client: MakeClient, service: FakeService
) -> None:
    import numpy as np

    from bbt.protocol import LogitsResponse, Tensor, Usage

    from .fakes import tagged_prompts, texts

    client = make_client(max_retries=0)
    client.model_info()
    bad = LogitsResponse(
        model="fake-mlm",
        logits=Tensor.from_numpy(np.zeros((1, 1, 2), np.float32)),
        usage=Usage(prompts=1, sequences=1, tokens=1),
    )
    service.faults.append(httpx.Response(200, content=bad.model_dump_json().encode()))
    with pytest.raises(ProtocolError, match="shape"):
        client.logits(tagged_prompts(2), texts(2), [5, 6])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0.0), ("12", 12.0), ("1.5", 1.5), ("-3", 0.0), ("soon", None), (None, None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    header = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(30.0)
    past = email.utils.formatdate(now - 30, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0
