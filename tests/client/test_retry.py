"""The retry policy: what is retried, how often, and how long each wait is."""

from __future__ import annotations

import random
from collections.abc import Callable

import httpx
import pytest

from bbt.client import Client
from bbt.client._base import BACKOFF_BASE
from bbt.errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
)
from bbt.protocol import ErrorType

from .fakes import FakeService, Waits, error_response

MakeClient = Callable[..., Client]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (413, BadRequestError),
        (422, BadRequestError),
        (409, APIStatusError),
    ],
)
def test_client_errors_are_never_retried(
    make_client: MakeClient,
    service: FakeService,
    waits: Waits,
    status: int,
    cls: type[Exception],
) -> None:
    service.faults.extend([error_response(status, ErrorType.invalid_request, "no")] * 3)
    client = make_client(max_retries=5)
    with pytest.raises(cls):
        client.health()
    assert len(service.requests) == 1
    assert client.usage.retries == 0
    assert waits == []


def _retryable_faults() -> list[tuple[str, Callable[[], object], type[Exception]]]:
    return [
        ("408", lambda: httpx.Response(408), APIStatusError),
        ("429", lambda: error_response(429, ErrorType.rate_limit, "slow"), RateLimitError),
        ("500", lambda: error_response(500, ErrorType.server_error, "boom"), ServerError),
        ("502", lambda: httpx.Response(502), ServerError),
        ("503", lambda: error_response(503, ErrorType.unavailable, "busy"), ServerError),
        ("504", lambda: httpx.Response(504), ServerError),
        ("connect", lambda: httpx.ConnectError("refused"), APIConnectionError),
        ("dropped", lambda: httpx.RemoteProtocolError("closed"), APIConnectionError),
        ("timeout", lambda: httpx.ReadTimeout("slow"), APITimeoutError),
    ]


@pytest.mark.parametrize(
    ("fault", "cls"),
    [(make, cls) for _, make, cls in _retryable_faults()],
    ids=[name for name, _, _ in _retryable_faults()],
)
def test_retryable_failures_retry_until_max_retries(
    make_client: MakeClient,
    service: FakeService,
    waits: Waits,
    fault: Callable[[], httpx.Response | Exception],
    cls: type[Exception],
) -> None:
    service.faults.extend(fault() for _ in range(10))
    client = make_client(max_retries=3)
    with pytest.raises(cls) as info:
        client.health()
    assert type(info.value) is cls
    assert len(service.requests) == 4  # the first try and three retries
    assert client.usage.retries == 3
    assert client.usage.requests == 4
    assert len(waits) == 3


@pytest.mark.parametrize(("name", "fault", "_cls"), _retryable_faults())
def test_retryable_failure_then_success_returns_the_result(
    make_client: MakeClient,
    service: FakeService,
    name: str,
    fault: Callable[[], httpx.Response | Exception],
    _cls: type[Exception],
) -> None:
    service.faults.extend([fault(), fault()])
    client = make_client(max_retries=2)
    assert client.health().models == ["fake-mlm"]
    assert client.usage.retries == 2
    assert len(service.requests) == 3


def test_max_retries_zero_turns_retries_off(
    make_client: MakeClient, service: FakeService, waits: Waits
) -> None:
    service.faults.append(httpx.Response(503))
    client = make_client(max_retries=0)
    with pytest.raises(ServerError):
        client.health()
    assert len(service.requests) == 1
    assert waits == []


def test_retry_after_is_honoured(
    make_client: MakeClient, service: FakeService, waits: Waits
) -> None:
    service.faults.extend(
        [
            error_response(429, ErrorType.rate_limit, "slow", **{"Retry-After": "3"}),
            error_response(503, ErrorType.unavailable, "busy", **{"Retry-After": "1.5"}),
        ]
    )
    client = make_client(max_retries=2, max_retry_wait=10)
    client.health()
    assert waits == [3.0, 1.5]


def test_retry_after_is_capped(make_client: MakeClient, service: FakeService, waits: Waits) -> None:
    service.faults.append(
        error_response(429, ErrorType.rate_limit, "slow", **{"Retry-After": "3600"})
    )
    make_client(max_retries=1, max_retry_wait=4.0).health()
    assert waits == [4.0]


def test_backoff_is_jittered_exponential_and_capped(
    make_client: MakeClient, service: FakeService, waits: Waits
) -> None:
    service.faults.extend(httpx.Response(500) for _ in range(6))
    client = make_client(max_retries=6, max_retry_wait=5.0, rng=random.Random(0))
    client.health()
    assert len(waits) == 6
    for attempt, wait in enumerate(waits, start=1):
        step = min(5.0, BACKOFF_BASE * 2 ** (attempt - 1))
        assert step / 2 <= wait <= step
    assert waits[-1] <= 5.0
    # Jitter: two clients failing together do not wait the same.
    other = Waits()
    service.faults.extend(httpx.Response(500) for _ in range(6))
    client2 = make_client(max_retries=6, max_retry_wait=5.0, rng=random.Random(1))
    client2._sleep = other.append
    client2.health()
    assert other != waits[:6]


def test_retries_are_logged_without_the_key(
    make_client: MakeClient, service: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    service.faults.append(httpx.Response(503))
    with caplog.at_level("DEBUG"):
        make_client(max_retries=1).health()
    retry_logs = [r for r in caplog.records if r.name == "bbt.client"]
    assert len(retry_logs) == 1
    assert "/healthz" in retry_logs[0].getMessage()
    assert "ServerError" in retry_logs[0].getMessage()


def _busy() -> httpx.Response:
    # What a server with a full queue answers (bbt serve's max_queue): 503 + Retry-After.
    return error_response(503, ErrorType.unavailable, "queue full", **{"Retry-After": "2"})


def test_a_busy_server_is_waited_out_beyond_max_retries(
    make_client: MakeClient, service: FakeService, waits: Waits
) -> None:
    service.faults.extend(_busy() for _ in range(10))
    client = make_client(max_retries=3, max_retry_wait=10)
    assert client.health().models == ["fake-mlm"]
    assert len(service.requests) == 11
    assert waits == [2.0] * 10
    assert client.usage.retries == 10


def test_backpressure_waits_are_capped_in_total(
    make_client: MakeClient,
    service: FakeService,
    waits: Waits,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BBT_MAX_BACKPRESSURE_WAIT", "7")
    service.faults.extend(_busy() for _ in range(10))
    client = make_client(max_retries=3, max_retry_wait=10)
    with pytest.raises(ServerError):
        client.health()
    # Waits of 2 s until they add up to 7 s or more: 2, 4, 6, 8 -> stop at the 5th answer.
    assert waits == [2.0] * 4
    assert len(service.requests) == 5


def test_ordinary_failures_keep_their_own_count_among_backpressure(
    make_client: MakeClient, service: FakeService, waits: Waits
) -> None:
    drop = httpx.RemoteProtocolError("closed")
    service.faults.extend([_busy(), drop, _busy(), drop, _busy(), drop, drop])
    client = make_client(max_retries=3, max_retry_wait=10)
    with pytest.raises(APIConnectionError):
        client.health()
    # The 4th connection failure is one too many; the three 503s did not count.
    assert len(service.requests) == 7


def test_max_retries_zero_also_turns_off_backpressure_retries(
    make_client: MakeClient, service: FakeService, waits: Waits
) -> None:
    service.faults.append(_busy())
    with pytest.raises(ServerError):
        make_client(max_retries=0).health()
    assert len(service.requests) == 1


def test_a_zero_retry_after_counts_as_an_ordinary_retry(
    make_client: MakeClient, service: FakeService, waits: Waits
) -> None:
    # "Retry-After: 0" is no pacing: waited out without a count it would be a hot loop.
    service.faults.extend(
        error_response(429, ErrorType.rate_limit, "slow", **{"Retry-After": "0"}) for _ in range(10)
    )
    with pytest.raises(RateLimitError):
        make_client(max_retries=2).health()
    assert len(service.requests) == 3
