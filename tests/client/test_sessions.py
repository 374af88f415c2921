"""Projection sessions from the client side: same logits as full prompts, bitwise, with a
fraction of the bytes; a lost session is reopened transparently; v1 servers are refused
cleanly."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from bbt.client import AsyncClient, Client, LocalClient, ProjectionSession, SessionService
from bbt.errors import NotFoundError, ProtocolError
from bbt.protocol import InitialPromptSpec, Limits
from bbt.protocol.projection import Projection, ProjectionRecipe
from bbt.server import MockBackend, ServerSettings
from bbt.server._core import ServiceCore
from bbt.testing import AsyncCoreTransport, CoreTransport

KEY = "client-session-key"
H = 64


def small_limits() -> Limits:
    # Two prompts a request: P = 5 goes out as 2 + 2 + 1, so a lone row is projected too.
    return Limits(
        max_prompts_per_request=2,
        max_texts_per_request=3,
        max_sequences_per_request=6,
        max_prompt_tokens=16,
        max_candidates=8,
        max_text_chars=200,
        max_embedding_ids=64,
        max_body_bytes=1 << 20,
    )


def recipe(dim: int = 50) -> ProjectionRecipe:
    # d = 50, D = 640: large enough that BLAS rounds a lone row's product differently from
    # a population's (project_rows must hide that), small enough to be instant.
    return ProjectionRecipe(seed=5, n_tokens=10, hidden_size=H, dim=dim, embedding_std=0.05)


def job(backend: MockBackend) -> tuple[np.ndarray[Any, Any], list[str], list[int]]:
    z = np.random.default_rng(1).standard_normal((5, 50)).astype(np.float32)
    mask = backend.info.mask_token
    texts = [f"{w} film . It was {mask} ." for w in ("a good", "a bad", "an odd", "a fine")]
    return z, texts, [3, 4]


@pytest.fixture
def core() -> ServiceCore:
    backend = MockBackend(hidden_size=H, limits=small_limits())
    return ServiceCore(backend, ServerSettings(api_keys=[SecretStr(KEY)]))


@pytest.fixture
def client(core: ServiceCore, no_env: None) -> Iterator[Client]:
    with Client("http://bbt.test", api_key=KEY, transport=CoreTransport(core)) as c:
        yield c


def full_prompt_logits(
    service: Any, backend: MockBackend, p0: np.ndarray[Any, Any] | None
) -> np.ndarray[Any, Any]:
    z, texts, ids = job(backend)
    out: np.ndarray[Any, Any] = service.logits(Projection(recipe()).project(z, p0), texts, ids)
    return out


def test_sync_session_logits_equal_full_prompts_bitwise_for_fewer_bytes(
    client: Client, core: ServiceCore
) -> None:
    backend = core.backend
    assert isinstance(backend, MockBackend)
    z, texts, ids = job(backend)
    p0 = backend.embed(np.arange(7, 17))
    assert isinstance(client, SessionService)
    assert client.supports_sessions()
    session = client.open_session(
        recipe(), InitialPromptSpec(token_ids=list(range(7, 17))), expected_fingerprint=None
    )
    before = client.usage.copy()
    got = client.session_logits(session, z, texts, ids)
    spent = client.usage - before
    before = client.usage.copy()
    want = full_prompt_logits(client, backend, p0)
    full = client.usage - before
    np.testing.assert_array_equal(got, want)
    assert spent.calls == full.calls == 5
    assert spent.requests == full.requests == 6  # 3 prompt groups x 2 text groups
    # The lone fifth row went twice (once per text group) to keep its bits: 4 more.
    assert spent.sequences == full.sequences + len(texts)
    assert spent.bytes_sent < full.bytes_sent / 3
    client.close_session(session)
    assert session.info is None
    client.close_session(session)  # closing twice is harmless


def test_async_session_logits_equal_full_prompts(core: ServiceCore, no_env: None) -> None:
    backend = core.backend
    assert isinstance(backend, MockBackend)
    z, texts, ids = job(backend)

    async def main() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], int]:
        transport = AsyncCoreTransport(core)
        async with AsyncClient("http://bbt.test", api_key=KEY, transport=transport) as c:
            assert await c.supports_sessions()
            session = await c.open_session(recipe())
            got = await c.session_logits(session, z, texts, ids)
            core.sessions.evict_all()  # type: ignore[union-attr]
            again = await c.session_logits(session, z, texts, ids)  # all chunks find it gone
            np.testing.assert_array_equal(again, got)
            await c.close_session(session)
            want = await c.logits(Projection(recipe()).project(z), texts, ids)
            return got, want, session.reopened

    got, want, reopened = anyio.run(main)
    np.testing.assert_array_equal(got, want)
    assert reopened == 1  # one reopen for six concurrent requests that found it gone


def test_local_client_sessions_run_the_server_code(no_env: None) -> None:
    backend = MockBackend(hidden_size=H, limits=small_limits())
    local = LocalClient(backend)
    z, texts, ids = job(backend)
    p0 = np.full((10, H), 0.01, np.float32)
    session = local.open_session(recipe(), p0)
    got = local.session_logits(session, z, texts, ids)
    np.testing.assert_array_equal(got, full_prompt_logits(local, backend, p0))
    assert local.usage.bytes_sent == 0
    local._host().evict_all()
    np.testing.assert_array_equal(local.session_logits(session, z, texts, ids), got)
    assert session.reopened == 1
    local.close_session(session)


def test_a_lost_session_is_reopened_once_with_identical_results(
    client: Client, core: ServiceCore
) -> None:
    backend = core.backend
    assert isinstance(backend, MockBackend)
    z, texts, ids = job(backend)
    session = client.open_session(recipe())
    first = client.session_logits(session, z, texts, ids)
    old_id = session.id
    assert core.sessions is not None
    core.sessions.evict(old_id)
    again = client.session_logits(session, z, texts, ids)
    np.testing.assert_array_equal(again, first)
    assert session.reopened == 1
    assert session.id != old_id


class _AlwaysGone(httpx.BaseTransport):
    """A server that loses every session at once: the retry must stop after one reopen."""

    def __init__(self, core: ServiceCore) -> None:
        self.inner = CoreTransport(core)
        self.core = core
        self.opens = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/sessions":
            self.opens += 1
        if request.url.path.endswith("/logits") and "/sessions/" in request.url.path:
            assert self.core.sessions is not None
            self.core.sessions.evict_all()
        return self.inner.handle_request(request)


def test_the_reopen_is_retried_once_and_errors_never_hold_the_key(
    core: ServiceCore, no_env: None
) -> None:
    backend = core.backend
    assert isinstance(backend, MockBackend)
    z, texts, ids = job(backend)
    server = _AlwaysGone(core)
    with Client("http://bbt.test", api_key=KEY, transport=server) as c:
        session = c.open_session(recipe())
        with pytest.raises(NotFoundError) as info:
            c.session_logits(session, z, texts, ids)
    assert info.value.error_type == "session_not_found"
    assert server.opens == 2
    assert KEY not in str(info.value)
    assert KEY not in repr(info.value.args)


def test_a_server_that_builds_another_a_is_refused(client: Client) -> None:
    with pytest.raises(ProtocolError, match="different projection A"):
        client.open_session(recipe(), expected_fingerprint="0" * 64)
    session = client.open_session(recipe(), expected_fingerprint=Projection(recipe()).fingerprint())
    assert isinstance(session, ProjectionSession)


def test_bad_z_is_refused_before_sending(client: Client, core: ServiceCore) -> None:
    backend = core.backend
    assert isinstance(backend, MockBackend)
    _, texts, ids = job(backend)
    session = client.open_session(recipe())
    sent = client.usage.requests
    for bad in (np.zeros((2, 49)), np.full((2, 50), np.nan), np.full((2, 50), 1e30)):
        with pytest.raises(ValueError, match="z"):
            client.session_logits(session, bad, texts, ids)
    assert client.usage.requests == sent


def test_a_server_without_sessions_says_so(no_env: None) -> None:
    backend = MockBackend(hidden_size=H)
    transport = CoreTransport(backend, ServerSettings(api_keys=[], sessions=False))
    with Client("http://bbt.test", transport=transport) as c:
        assert not c.supports_sessions()
        with pytest.raises(NotFoundError, match="does not offer projection sessions"):
            c.open_session(recipe())


def test_a_local_client_holds_any_number_of_sessions(no_env: None) -> None:
    local = LocalClient(MockBackend(hidden_size=H))
    sessions = [local.open_session(recipe()) for _ in range(6)]  # a server allows 4 a key
    z = np.zeros((2, 50), np.float32)
    texts = [f"fine . It was {local.model_info().mask_token} ."]
    for s in sessions:
        assert local.session_logits(s, z, texts, [3]).shape == (2, 1, 1)
    assert all(s.reopened == 0 for s in sessions)
