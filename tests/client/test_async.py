"""AsyncClient behaves like Client: same results, errors, retries and usage."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest

from bbt.client import AsyncClient, Client
from bbt.errors import AuthenticationError, InvalidRequestError, RateLimitError, ServerError
from bbt.protocol import ErrorType

from .fakes import FakeService, Waits, error_response, expected_logits, tagged_prompts, texts

MakeAsync = Callable[..., AsyncClient]

pytestmark = pytest.mark.anyio


async def test_same_results_and_usage_as_the_sync_client(
    make_async_client: MakeAsync, make_client: Callable[..., Client], service: FakeService
) -> None:
    sync = make_client()
    sync_out = sync.logits(tagged_prompts(7), texts(9), [5, 6])
    sync_tok = sync.tokenize(texts(6))
    sync_emb = sync.embed(list(range(12)))
    async with make_async_client() as client:
        out = await client.logits(tagged_prompts(7), texts(9), [5, 6])
        tok = await client.tokenize(texts(6))
        emb = await client.embed(list(range(12)))
        health = await client.health()
        models = await client.models()
    np.testing.assert_array_equal(out, expected_logits(7, 9, 2))
    np.testing.assert_array_equal(out, sync_out)
    assert tok == sync_tok
    np.testing.assert_array_equal(emb, sync_emb)
    assert health.models == ["fake-mlm"]
    assert [m.id for m in models] == ["fake-mlm"]
    usage, sync_usage = client.usage.as_dict(), sync.usage.as_dict()
    # The async client also made health and models requests: two more, the rest identical.
    assert usage.pop("requests") == sync_usage.pop("requests") + 2
    usage.pop("bytes_sent"), sync_usage.pop("bytes_sent")
    usage.pop("bytes_received"), sync_usage.pop("bytes_received")
    assert usage == sync_usage


async def test_split_requests_run_concurrently_but_bounded(service: FakeService) -> None:
    in_flight = 0
    peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.01)
        in_flight -= 1
        return service(request)

    async with AsyncClient(
        "http://bbt.test",
        api_key="sk-test-0123456789abcdef",
        transport=httpx.MockTransport(handler),
        env_file=None,
        max_concurrency=3,
    ) as client:
        out = await client.logits(tagged_prompts(9), texts(8), [5])
    np.testing.assert_array_equal(out, expected_logits(9, 8, 1))
    assert peak == 3
    logits_bodies = [json.loads(r.content) for r in service.requests if r.url.path == "/v1/logits"]
    assert len(logits_bodies) > 3


async def test_retries_and_waits_match_the_sync_policy(
    make_async_client: MakeAsync, service: FakeService, waits: Waits
) -> None:
    service.faults.extend(
        [
            error_response(429, ErrorType.rate_limit, "slow", **{"Retry-After": "2"}),
            httpx.ConnectError("refused"),
        ]
    )
    async with make_async_client(max_retries=2, max_retry_wait=10) as client:
        await client.health()
    assert waits[0] == 2.0
    assert len(waits) == 2
    assert client.usage.retries == 2
    assert client.usage.requests == 3


async def test_exhausted_retries_raise_the_last_error(
    make_async_client: MakeAsync, service: FakeService
) -> None:
    service.faults.extend(
        [httpx.Response(503)] * 2 + [error_response(429, ErrorType.rate_limit, "x")]
    )
    async with make_async_client(max_retries=2) as client:
        with pytest.raises(RateLimitError):
            await client.health()
    assert len(service.requests) == 3


async def test_no_retry_on_client_errors(
    make_async_client: MakeAsync, service: FakeService
) -> None:
    service.api_key = "another-key"
    async with make_async_client(max_retries=5) as client:
        with pytest.raises(AuthenticationError):
            await client.health()
    assert len(service.requests) == 1


async def test_failure_in_one_split_request_fails_the_call(
    make_async_client: MakeAsync, service: FakeService
) -> None:
    async with make_async_client(max_retries=0) as client:
        await client.model_info()
        service.faults.append(httpx.Response(500))
        with pytest.raises(ServerError):
            await client.logits(tagged_prompts(6), texts(8), [5])
    assert client.usage.calls == 0


async def test_preflight_checks_cost_no_request(
    make_async_client: MakeAsync, service: FakeService
) -> None:
    async with make_async_client() as client:
        await client.model_info()
        with pytest.raises(InvalidRequestError):
            await client.logits(tagged_prompts(1), ["no mask here"], [5])
    assert [r.url.path for r in service.requests] == ["/v1/models"]


async def test_asgi_transport_is_accepted() -> None:
    """Any ASGI app can stand in for the network, as with httpx.AsyncClient."""
    fake = FakeService(api_key=None)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        url = f"http://bbt.test{scope['path']}"
        response = fake(httpx.Request(scope["method"], url, content=body))
        headers = [(k.encode(), v.encode()) for k, v in response.headers.items()]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": headers}
        )
        await send({"type": "http.response.body", "body": response.content})

    async with AsyncClient(
        "http://bbt.test", transport=httpx.ASGITransport(app=app), env_file=None
    ) as client:
        out = await client.logits(tagged_prompts(2), texts(3), [5, 6])
    np.testing.assert_array_equal(out, expected_logits(2, 3, 2))
    assert client.usage.bytes_received > 0
