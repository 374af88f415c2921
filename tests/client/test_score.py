"""The score call from the client side (protocol 1.6): Client, AsyncClient and LocalClient
split by the server's limits, count usage, and agree with the backend; a server without
the capability is refused before anything is sent."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import numpy as np
import pytest

from bbt.client import AsyncClient, Client, LocalClient, ScoreService
from bbt.client.score import TextScores
from bbt.client.service import offers_score
from bbt.errors import InvalidRequestError
from bbt.protocol import Limits
from bbt.server import MockBackend, ServerSettings
from bbt.server._core import ServiceCore
from bbt.testing import AsyncCoreTransport, CoreTransport

TEXTS = ["the movie was great", "great was the movie", "fine", "a bad and boring plot", "ok"]


def _limits() -> Limits:
    # Two texts a request: five texts go out as three requests.
    return Limits(
        max_prompts_per_request=2,
        max_texts_per_request=2,
        max_sequences_per_request=4,
        max_prompt_tokens=16,
        max_candidates=8,
        max_text_chars=200,
        max_embedding_ids=64,
        max_body_bytes=1 << 20,
    )


@pytest.fixture
def backend() -> MockBackend:
    return MockBackend(causal=True, limits=_limits())


@pytest.fixture
def client(backend: MockBackend, no_env: None) -> Iterator[Client]:
    core = ServiceCore(backend, ServerSettings(api_keys=[]))
    with Client("http://bbt.test", transport=CoreTransport(core)) as c:
        yield c


def _check(got: TextScores, backend: MockBackend) -> None:
    sums, counts, _ = backend.score(TEXTS)
    np.testing.assert_array_equal(got.logprobs, sums)
    np.testing.assert_array_equal(got.token_counts, counts)
    want = np.exp(-np.asarray(sums) / np.maximum(counts, 1))
    np.testing.assert_allclose(got.perplexity(), want)


def test_client_score_splits_by_the_limits_and_counts_usage(
    client: Client, backend: MockBackend
) -> None:
    assert isinstance(client, ScoreService)
    assert offers_score(client)
    before = client.usage.copy()
    got = client.score(TEXTS)
    spent = client.usage - before
    _check(got, backend)
    _, _, usage = backend.score(TEXTS)
    assert (spent.calls, spent.requests) == (1, 3)
    assert spent.sequences == usage.sequences == 5
    assert spent.tokens == usage.tokens  # what the server reported, summed over requests
    assert spent.bytes_sent > 0


def test_local_and_async_clients_agree(backend: MockBackend) -> None:
    local = LocalClient(backend)
    assert offers_score(local)
    _check(local.score(TEXTS), backend)
    assert (local.usage.calls, local.usage.requests) == (1, 3)

    async def run() -> TextScores:
        core = ServiceCore(backend, ServerSettings(api_keys=[]))
        async with AsyncClient("http://bbt.test", transport=AsyncCoreTransport(core)) as c:
            assert await c.supports_score()
            return await c.score(TEXTS)

    _check(anyio.run(run), backend)


def test_a_masked_model_is_refused_before_sending(no_env: None) -> None:
    backend = MockBackend()
    core = ServiceCore(backend, ServerSettings(api_keys=[]))
    with Client("http://bbt.test", transport=CoreTransport(core)) as c:
        assert not offers_score(c)  # reads the model list: one request
        sent = c.usage.requests
        with pytest.raises(InvalidRequestError, match="'score'"):
            c.score(["a b"])
        assert c.usage.requests == sent
    local = LocalClient(backend)
    with pytest.raises(InvalidRequestError, match="'score'"):
        local.score(["a b"])
    with pytest.raises(InvalidRequestError, match="at least one text"):
        LocalClient(MockBackend(causal=True)).score([])
