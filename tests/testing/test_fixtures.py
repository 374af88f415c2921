"""The pytest fixtures that bbt ships for users' offline tests."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable

import httpx
import numpy as np
import pytest
import respx
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bbt.client import AsyncClient, Client
from bbt.errors import AuthenticationError, RateLimitError
from bbt.server import (
    MOCK_MASK_TOKEN,
    MOCK_TEMPLATE,
    MOCK_VERBALIZER,
    FaultConfig,
    MockBackend,
    ServerSettings,
    sample_mock_dataset,
)
from bbt.testing import MOCK_BASE_URL, AsyncCoreTransport, CoreTransport

TEXTS = [MOCK_TEMPLATE.format(text=t, mask=MOCK_MASK_TOKEN) for t, _ in sample_mock_dataset(4, 0)]


def _candidates(client: Client) -> list[int]:
    return [ids[0] for ids in client.tokenize(list(MOCK_VERBALIZER)).ids]


def test_plugin_is_registered(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.pluginmanager.has_plugin("bbt")


def test_mock_app(mock_app: FastAPI) -> None:
    r = TestClient(mock_app).get("/v1/models")
    assert r.status_code == 200
    assert r.json()["data"][0]["id"] == "bbt-mock"


def test_mock_client_matches_the_backend(mock_client: Client, mock_backend: MockBackend) -> None:
    info = mock_client.model_info()
    # A 1.5 client is told the version and the capabilities the app adds to the backend's.
    served = {
        "protocol_version": "1.5",
        "capabilities": [*mock_backend.info.capabilities, "sessions"],
    }
    assert info == mock_backend.info.model_copy(update=served)
    prompts = np.random.default_rng(0).standard_normal((3, 4, info.hidden_size)) * 0.05
    cands = _candidates(mock_client)
    got = mock_client.logits(prompts.astype(np.float32), TEXTS, cands)
    want, _ = mock_backend.logits(prompts.astype(np.float32), TEXTS, np.array(cands))
    np.testing.assert_array_equal(got, want)
    assert mock_client.usage.calls == 3


def test_core_transport_enforces_auth(mock_backend: MockBackend) -> None:
    transport = CoreTransport(mock_backend, ServerSettings(api_keys=[SecretStr("k")]))
    anonymous = Client(MOCK_BASE_URL, transport=transport, env_file=None, max_retries=0)
    with anonymous as client, pytest.raises(AuthenticationError):
        client.model_info()
    with Client(MOCK_BASE_URL, "k", transport=transport, env_file=None) as client:
        assert client.model_info().id == "bbt-mock"


def test_mock_respx_serves_plain_httpx_and_the_client(mock_respx: respx.MockRouter) -> None:
    r = httpx.get(f"{MOCK_BASE_URL}/v1/models")
    assert r.status_code == 200
    assert r.headers["x-bbt-protocol"] == "1"
    with Client(MOCK_BASE_URL, env_file=None) as client:
        out = client.logits(np.zeros((2, 0, 64), np.float32), TEXTS, _candidates(client))
        assert out.shape == (2, 4, 2)
        assert client.health().models == ["bbt-mock"]
    assert mock_respx.calls.call_count >= 3


def test_mock_respx_answers_health(mock_respx: respx.MockRouter) -> None:
    assert httpx.get(f"{MOCK_BASE_URL}/healthz").json()["models"] == ["bbt-mock"]


def test_live_mock_server(live_mock_server: str) -> None:
    assert live_mock_server.startswith("http://127.0.0.1:")
    with Client(live_mock_server, env_file=None) as client:
        assert client.health().models == ["bbt-mock"]
        out = client.logits(np.zeros((1, 2, 64), np.float32), TEXTS, _candidates(client))
        assert out.shape == (1, 4, 2)


def test_live_factory_with_settings_and_faults(
    live_mock_server_factory: Callable[..., str],
) -> None:
    url = live_mock_server_factory(settings=ServerSettings(api_keys=[SecretStr("k")]))
    assert httpx.get(f"{url}/v1/models").status_code == 401
    assert httpx.get(f"{url}/v1/models", headers={"authorization": "Bearer k"}).is_success
    limited = live_mock_server_factory(faults=FaultConfig(rate_429=1.0, retry_after_s=0))
    with Client(limited, env_file=None, max_retries=1) as client, pytest.raises(RateLimitError):
        client.model_info()
    other = live_mock_server_factory(backend=MockBackend(hidden_size=32))
    assert httpx.get(f"{other}/v1/models").json()["data"][0]["hidden_size"] == 32
    assert len({url, limited, other}) == 3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
async def test_async_core_transport(mock_backend: MockBackend) -> None:
    transport = AsyncCoreTransport(mock_backend)
    async with AsyncClient(MOCK_BASE_URL, transport=transport, env_file=None) as client:
        info = await client.model_info()
        out = await client.logits(np.zeros((2, 1, info.hidden_size), np.float32), TEXTS, [1, 2])
        assert out.shape == (2, 4, 2)


def test_importing_bbt_testing_needs_no_fastapi() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["fastapi"] = None
        sys.modules["uvicorn"] = None
        import bbt.testing, bbt.testing.plugin
        from bbt.errors import ConfigurationError
        from bbt.server import MockBackend
        from bbt.testing import CoreTransport, live_server
        import httpx
        client = httpx.Client(transport=CoreTransport(MockBackend()), base_url="http://x")
        assert client.get("/v1/models").status_code == 200
        try:
            live_server(MockBackend())
        except ConfigurationError as exc:
            assert "bbt[server]" in str(exc), exc
        else:
            raise SystemExit("live_server worked without fastapi")
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
