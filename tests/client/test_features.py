"""The features calls from the client side (protocol 1.3): Client, AsyncClient and
LocalClient split by the server's limits, count usage, and agree with the backend; a
server without the capability is refused before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import numpy as np
import pytest

from bbt.client import AsyncClient, Client, FeatureService, LocalClient
from bbt.client.service import offers_features
from bbt.errors import InvalidRequestError
from bbt.protocol import FEATURES_CAPABILITY
from bbt.protocol.projection import Projection, ProjectionRecipe
from bbt.server import MockBackend, ServerSettings
from bbt.server._core import ServiceCore
from bbt.testing import AsyncCoreTransport, CoreTransport

from .test_sessions import small_limits

H = 64


def job(backend: MockBackend) -> tuple[np.ndarray[Any, Any], list[str]]:
    prompts = np.random.default_rng(1).standard_normal((5, 4, H)).astype(np.float32) * 0.05
    mask = backend.info.mask_token
    words = ("a good", "a bad", "an odd", "a fine")
    return prompts, [f"{w} film . It was {mask} ." for w in words]


@pytest.fixture
def backend() -> MockBackend:
    return MockBackend(hidden_size=H, limits=small_limits())


@pytest.fixture
def client(backend: MockBackend, no_env: None) -> Iterator[Client]:
    core = ServiceCore(backend, ServerSettings(api_keys=[]))
    with Client("http://bbt.test", transport=CoreTransport(core)) as c:
        yield c


@pytest.mark.parametrize("pooling", ["mean", "mask"])
def test_client_features_split_by_the_limits_and_count_usage(
    client: Client, backend: MockBackend, pooling: Any
) -> None:
    prompts, texts = job(backend)
    assert isinstance(client, FeatureService)
    assert offers_features(client)
    before = client.usage.copy()
    got = client.features(texts, prompts, pooling=pooling)
    spent = client.usage - before
    want, usage = backend.features(prompts, texts, pooling)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.shape == (5, 4, H)
    assert got.dtype == np.float32
    assert spent.calls == 5
    assert spent.requests == 6  # 3 prompt groups x 2 text groups
    assert spent.sequences == usage.sequences == 20
    assert spent.tokens == usage.tokens
    assert spent.bytes_sent > 0


def test_client_features_without_prompts_are_one_row(client: Client, backend: MockBackend) -> None:
    _, texts = job(backend)
    got = client.features(texts)
    assert got.shape == (1, 4, H)
    want, _ = backend.features(np.zeros((1, 0, H), np.float32), texts, "mean")
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert client.usage.calls == 1


def test_async_and_local_clients_agree_with_the_sync_one(
    client: Client, backend: MockBackend
) -> None:
    prompts, texts = job(backend)
    want = client.features(texts, prompts, pooling="mask")
    local = LocalClient(backend)
    assert local.supports_features()
    np.testing.assert_array_equal(local.features(texts, prompts, pooling="mask"), want)
    assert local.usage.calls == 5
    assert local.usage.requests == 6

    async def run() -> np.ndarray[Any, Any]:
        core = ServiceCore(backend, ServerSettings(api_keys=[]))
        async with AsyncClient("http://bbt.test", transport=AsyncCoreTransport(core)) as c:
            assert await c.supports_features()
            out: np.ndarray[Any, Any] = await c.features(texts, prompts, pooling="mask")
            assert c.usage.calls == 5
            return out

    np.testing.assert_array_equal(anyio.run(run), want)


def test_session_features_are_those_of_the_projected_prompts(
    client: Client, backend: MockBackend
) -> None:
    _, texts = job(backend)
    recipe = ProjectionRecipe(seed=5, n_tokens=4, hidden_size=H, dim=20, embedding_std=0.05)
    z = np.random.default_rng(2).standard_normal((5, 20)).astype(np.float32)
    want = client.features(texts, Projection(recipe).project(z))
    for service in (client, LocalClient(backend)):
        session = service.open_session(recipe)
        before = service.usage.copy()
        got = service.session_features(session, z, texts)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert (service.usage - before).calls == 5
        service.close_session(session)


def test_a_server_without_features_is_refused_before_sending(no_env: None) -> None:
    backend = MockBackend(hidden_size=H, features=False)
    core = ServiceCore(backend, ServerSettings(api_keys=[]))
    with Client("http://bbt.test", transport=CoreTransport(core)) as c:
        assert not c.supports_features()
        assert not offers_features(c)
        sent = c.usage.requests
        with pytest.raises(InvalidRequestError, match=FEATURES_CAPABILITY) as err:
            c.features(["a [MASK] b"])
        assert c.usage.requests == sent
        assert err.value.field == "model"
    with pytest.raises(InvalidRequestError, match=FEATURES_CAPABILITY):
        LocalClient(backend).features(["a [MASK] b"])


def test_bad_texts_name_the_callers_index(client: Client, backend: MockBackend) -> None:
    _, texts = job(backend)
    with pytest.raises(InvalidRequestError) as err:
        client.features([*texts, "no mask"])
    assert err.value.field == "texts.4"
