"""Usage counters: exact after every kind of call, retries and failures included."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from bbt.client import Client, UsageStats
from bbt.errors import ServerError

from .fakes import FakeService, tagged_prompts, texts

MakeClient = Callable[..., Client]


def _sent(service: FakeService) -> int:
    return sum(len(r.content) for r in service.requests)


def test_logits_usage_is_exact(make_client: MakeClient, service: FakeService) -> None:
    client = make_client()
    client.logits(tagged_prompts(7, n_tokens=2), texts(9), [5, 6])
    # 7 x 9 over limits (3 prompts, 4 texts, 8 sequences): 4 texts x 2 prompts per request,
    # so 4 prompt groups x 3 text groups.
    logits_requests = [r for r in service.requests if r.url.path == "/v1/logits"]
    assert len(logits_requests) == 12
    usage = client.usage
    assert usage.calls == 7
    assert usage.requests == 13  # /v1/models once, then the logits requests
    assert usage.retries == 0
    assert usage.sequences == 63
    assert usage.tokens == 63 * (2 + 3)
    assert usage.bytes_sent == _sent(service)
    assert usage.bytes_received == service.response_bytes


def test_retries_count_requests_and_bytes_of_every_attempt(
    make_client: MakeClient, service: FakeService
) -> None:
    client = make_client(max_retries=3)
    client.model_info()
    service.faults.extend([httpx.Response(503, text="busy"), httpx.ConnectError("refused")])
    client.logits(tagged_prompts(1), texts(1), [5])
    usage = client.usage
    assert usage.calls == 1
    assert usage.requests == 4  # models + three attempts of one logits request
    assert usage.retries == 2
    assert usage.sequences == 1
    assert usage.bytes_sent == _sent(service)
    assert usage.bytes_received == service.response_bytes


def test_failed_call_counts_requests_but_not_calls(
    make_client: MakeClient, service: FakeService
) -> None:
    client = make_client(max_retries=1)
    client.model_info()
    service.faults.extend([httpx.Response(500), httpx.Response(500)])
    with pytest.raises(ServerError):
        client.logits(tagged_prompts(2), texts(2), [5])
    assert client.usage.calls == 0
    assert client.usage.requests == 3
    assert client.usage.retries == 1


def test_other_endpoints_count_requests_not_calls(
    make_client: MakeClient, service: FakeService
) -> None:
    client = make_client()
    client.health()
    client.tokenize(texts(5))
    client.embed(list(range(7)))
    assert client.usage.calls == 0
    assert client.usage.requests == 1 + 1 + 2 + 2  # health, models, 2 tokenize, 2 embed
    assert client.usage.bytes_sent == _sent(service)
    assert client.usage.bytes_received == service.response_bytes


def test_usage_snapshots_subtract() -> None:
    a = UsageStats(calls=5, requests=7, bytes_sent=100)
    b = a.copy()
    a.calls += 3
    a.bytes_sent += 50
    assert (a - b).as_dict() == {
        "calls": 3,
        "requests": 0,
        "retries": 0,
        "bytes_sent": 50,
        "bytes_received": 0,
        "sequences": 0,
        "tokens": 0,
    }
