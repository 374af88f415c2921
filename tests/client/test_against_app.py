"""The clients against the real app factory and mock backend, faults injected.

The issue's acceptance check in small: with 30 % injected 503s and 10 % dropped
connections every call completes with the fault-free result, and the usage counters
report the retries. Also: Client, AsyncClient and LocalClient agree to the bit.
"""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("fastapi")

from bbt.client import AsyncClient, Client, LocalClient
from bbt.errors import AuthenticationError, InvalidRequestError
from bbt.server.app import create_app
from bbt.server.faults import FaultConfig
from bbt.server.mock import MockBackend
from bbt.server.settings import ServerSettings
from bbt.testing._live import live_server
from bbt.testing._transport import CoreTransport

from .fakes import Waits

KEY = "sk-app-test-key-42"
H = 64

pytestmark = pytest.mark.anyio


def _job(mask: str) -> tuple[np.ndarray[Any, Any], list[str]]:
    rng = np.random.default_rng(0)
    prompts = rng.normal(0.0, 0.05, size=(6, 4, H)).astype(np.float32)
    words = ["a great film", "a dull mess", "it was fine", "truly terrible", "lovely"]
    return prompts, [f"{w} . It was {mask} ." for w in words]


def _app(faults: FaultConfig | None = None) -> Any:
    return create_app(MockBackend(hidden_size=H), ServerSettings(api_keys=[KEY]), faults)


def _run(client: Client, waits: Waits) -> np.ndarray[Any, Any]:
    client._sleep = waits.append
    info = client.model_info()
    ids = client.tokenize(["great", "terrible"]).ids
    prompts, texts = _job(info.mask_token)
    return np.stack([client.logits(prompts * k, texts, [ids[0][0], ids[1][0]]) for k in range(8)])


def test_live_server_faults_change_nothing_but_the_retry_count(no_env: None) -> None:
    """Over real loopback HTTP: 30 % 503s and 10 % dropped connections."""
    faults = FaultConfig(rate_503=0.3, rate_drop=0.1, seed=3)
    settings = ServerSettings(api_keys=[KEY])
    results, usages, waits = [], [], []
    for fault in (None, faults):
        server = live_server(MockBackend(hidden_size=H), settings=settings, faults=fault)
        with server, Client(server.base_url, api_key=KEY, env_file=None, max_retries=20) as client:
            waits.append(Waits())
            results.append(_run(client, waits[-1]))
            usages.append(client.usage)
    clean, faulty = results
    np.testing.assert_array_equal(clean, faulty)
    assert usages[0].retries == 0
    assert usages[1].retries > 0
    assert len(waits[1]) == usages[1].retries
    assert usages[1].calls == usages[0].calls == 8 * 6
    assert usages[1].requests == usages[0].requests + usages[1].retries


async def test_async_client_through_the_asgi_app_with_faults(no_env: None) -> None:
    # No dropped connections here: in-process ASGI has no connection to drop.
    faults = FaultConfig(rate_503=0.3, rate_429=0.1, seed=5)
    results, usages = [], []
    for app in (_app(), _app(faults)):
        waits = Waits()
        async with AsyncClient(
            "http://mock",
            api_key=KEY,
            transport=httpx.ASGITransport(app=app),
            env_file=None,
            max_retries=20,
        ) as client:

            async def record(seconds: float, waits: Waits = waits) -> None:
                waits.append(seconds)

            client._sleep = record
            info = await client.model_info()
            ids = (await client.tokenize(["great", "terrible"])).ids
            prompts, texts = _job(info.mask_token)
            cands = [ids[0][0], ids[1][0]]
            outs = [await client.logits(prompts * k, texts, cands) for k in range(8)]
        results.append(np.stack(outs))
        usages.append(client.usage)
        assert len(waits) == client.usage.retries
    np.testing.assert_array_equal(results[0], results[1])
    assert usages[0].retries == 0
    assert usages[1].retries > 0


def test_client_async_and_local_agree(no_env: None) -> None:
    backend = MockBackend(hidden_size=H)
    local = LocalClient(backend)
    info = local.model_info()
    prompts, texts = _job(info.mask_token)
    with Client("http://mock", transport=CoreTransport(backend), env_file=None) as client:
        via_http = client.logits(prompts, texts, [5, 7])
        assert client.model_info() == info
        np.testing.assert_array_equal(client.embed([1, 2, 3]), local.embed([1, 2, 3]))
        assert client.tokenize(texts) == local.tokenize(texts)
    np.testing.assert_array_equal(via_http, local.logits(prompts, texts, [5, 7]))
    assert local.usage.sequences == client.usage.sequences == 6 * 5
    assert local.usage.tokens == client.usage.tokens
    assert local.usage.calls == client.usage.calls == 6


async def test_wrong_key_and_local_checks_against_the_app(no_env: None) -> None:
    async with AsyncClient(
        "http://mock", api_key="wrong", transport=httpx.ASGITransport(app=_app()), env_file=None
    ) as client:
        with pytest.raises(AuthenticationError) as info:
            await client.models()
        assert "wrong" not in str(info.value)
    async with AsyncClient(
        "http://mock", api_key=KEY, transport=httpx.ASGITransport(app=_app()), env_file=None
    ) as client:
        with pytest.raises(InvalidRequestError):
            await client.logits(np.zeros((1, 1, H + 1), np.float32), ["x [MASK]"], [1])
