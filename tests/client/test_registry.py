"""The clients' prompt registry calls: store, describe, score by id, delete.

``Client`` and ``AsyncClient`` run against the server's core in-process
(``bbt.testing.CoreTransport``), ``LocalClient`` against its backend; all must agree with
each other and with sending the prompt itself."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from bbt.client import AsyncClient, Client, LocalClient
from bbt.errors import InvalidRequestError, NotFoundError, PermissionDeniedError
from bbt.protocol import Limits, StoredPrompt
from bbt.server import MockBackend, ServerSettings
from bbt.server._core import ServiceCore
from bbt.server.registry import PromptRegistry, RegistryLimits
from bbt.testing import AsyncCoreTransport, CoreTransport

KEY_A = "sk-client-a-1234abcd"
KEY_B = "sk-client-b-5678efgh"
BASE = "http://registry.test"
H = 64
CANDIDATES = [5, 6]


def _texts(b: int) -> list[str]:
    return [f"w{i} the film It was [MASK] ." for i in range(b)]


def _prompt(seed: int = 0, n: int = 4) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(seed).standard_normal((n, H)) * 0.05).astype(np.float32)


class SyncAsync:
    """An AsyncClient behind the sync registry calls, for one parametrised test body."""

    def __init__(self, client: AsyncClient) -> None:
        self.client = client
        self.usage = client.usage

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            return asyncio.run(method(*args, **kwargs))

        return call


@pytest.fixture
def core(tmp_path: Path) -> Iterator[ServiceCore]:
    registry = PromptRegistry(tmp_path / "registry.sqlite3", RegistryLimits(max_prompts=3))
    keys = [SecretStr(KEY_A), SecretStr(KEY_B)]
    yield ServiceCore(MockBackend(hidden_size=H), ServerSettings(api_keys=keys), registry)
    registry.close()


def _client(kind: str, core: ServiceCore, key: str = KEY_A) -> Any:
    if kind == "sync":
        return Client(BASE, key, transport=CoreTransport(core), env_file=None, max_retries=2)
    if kind == "async":
        return SyncAsync(
            AsyncClient(BASE, key, transport=AsyncCoreTransport(core), env_file=None, max_retries=2)
        )
    assert core.prompts is not None
    return LocalClient(core.backend, registry=core.prompts.registry)


KINDS = ["sync", "async", "local"]


@pytest.mark.parametrize("kind", KINDS)
def test_round_trip_matches_sending_the_prompt(kind: str, core: ServiceCore) -> None:
    client = _client(kind, core)
    prompt = _prompt()
    stored = client.store_prompt(prompt, label="demo")
    assert isinstance(stored, StoredPrompt)
    assert stored.shape == [4, H]
    assert client.get_prompt(stored.id) == stored
    by_id = client.prompt_logits(stored.id, _texts(5), CANDIDATES)
    sent = client.logits(prompt[None], _texts(5), CANDIDATES)[0]
    assert by_id.shape == (5, 2)
    np.testing.assert_array_equal(by_id, sent)
    assert [p.id for p in client.list_prompts()] == [stored.id]
    client.delete_prompt(stored.id)
    assert client.list_prompts() == []
    with pytest.raises(NotFoundError):
        client.get_prompt(stored.id)
    with pytest.raises(NotFoundError):
        client.prompt_logits(stored.id, _texts(1), CANDIDATES)


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_another_key_gets_not_found(kind: str, core: ServiceCore) -> None:
    owner, other = _client(kind, core, KEY_A), _client(kind, core, KEY_B)
    pid = owner.store_prompt(_prompt()).id
    for call in (
        lambda: other.get_prompt(pid),
        lambda: other.prompt_logits(pid, _texts(2), CANDIDATES),
        lambda: other.delete_prompt(pid),
    ):
        with pytest.raises(NotFoundError) as info:
            call()
        assert info.value.status_code == 404
        assert KEY_A not in str(info.value)
        assert KEY_B not in str(info.value)
    assert owner.get_prompt(pid).id == pid  # untouched by the other key


@pytest.mark.parametrize("kind", KINDS)
def test_shared_prompts_are_listed_and_fetched_but_not_deleted(
    kind: str, core: ServiceCore
) -> None:
    from bbt.server.shared_prompts import publish

    assert core.prompts is not None
    shared = _prompt(seed=9)
    meta = {"fingerprint": "0123456789abcdef", "source_task": "demo", "tokens": 4}
    sid = publish(core.prompts.registry, shared, model="bbt-mock", metadata=meta)[0].id
    client = _client(kind, core)
    own = client.store_prompt(_prompt(seed=1)).id
    assert {(p.id, p.shared) for p in client.list_prompts()} == {(sid, True), (own, False)}
    got = client.fetch_prompt(sid)
    assert got.shared
    assert got.recipe == meta
    assert got.tensor.to_numpy().tobytes() == shared.tobytes()
    assert client.fetch_prompt(own).tensor.to_numpy().tobytes() == _prompt(seed=1).tobytes()
    with pytest.raises(PermissionDeniedError, match="read-only"):
        client.delete_prompt(sid)
    assert client.get_prompt(sid).shared
    with pytest.raises(InvalidRequestError):
        client.fetch_prompt("../models")  # no prompt id: refused before any request


@pytest.mark.parametrize("kind", KINDS)
def test_a_full_registry_is_refused_once_not_retried(kind: str, core: ServiceCore) -> None:
    client = _client(kind, core)
    for seed in range(3):
        client.store_prompt(_prompt(seed))
    before = client.usage.requests
    with pytest.raises(PermissionDeniedError) as info:
        client.store_prompt(_prompt(99))
    assert "delete some" in str(info.value)
    assert client.usage.requests - before == 1  # a 403 is final: no retry


@pytest.mark.parametrize("kind", KINDS)
def test_bad_ids_and_prompts_cost_no_request(kind: str, core: ServiceCore) -> None:
    client = _client(kind, core)
    client.model_info()  # discovery is a request of its own
    before = client.usage.requests
    for bad in ("../models", "bp_short", "", "bp_" + "a" * 32 + "/x"):
        with pytest.raises(InvalidRequestError) as info:
            client.prompt_logits(bad, _texts(1), CANDIDATES)
        assert info.value.field == "prompt_id"
    with pytest.raises(InvalidRequestError):
        client.store_prompt(np.zeros((2, H + 1), dtype=np.float32))
    nan = _prompt()
    nan[0, 0] = np.nan
    with pytest.raises(InvalidRequestError):
        client.store_prompt(nan)
    # A deep prompt [L, n, H] on a model that does not list "deep_prompts".
    with pytest.raises(InvalidRequestError):
        client.store_prompt(np.zeros((1, 2, H), dtype=np.float32))
    assert client.usage.requests == before


def test_by_id_requests_split_over_the_text_limit(tmp_path: Path) -> None:
    limits = Limits(
        max_prompts_per_request=4,
        max_texts_per_request=3,
        max_sequences_per_request=64,
        max_prompt_tokens=16,
        max_candidates=64,
        max_text_chars=200,
        max_embedding_ids=64,
        max_body_bytes=1 << 20,
    )
    registry = PromptRegistry(tmp_path / "split.sqlite3")
    core = ServiceCore(MockBackend(hidden_size=H, limits=limits), ServerSettings(), registry)
    with Client(BASE, transport=CoreTransport(core), env_file=None) as client:
        pid = client.store_prompt(_prompt()).id
        before = client.usage.copy()
        out = client.prompt_logits(pid, _texts(8), CANDIDATES)
        used = client.usage - before
        assert used.requests == 3  # 8 texts, at most 3 per request
        assert used.calls == 1
        assert used.sequences == 8
        np.testing.assert_array_equal(out, client.logits(_prompt()[None], _texts(8), CANDIDATES)[0])
    registry.close()


def test_by_id_uploads_only_the_texts(core: ServiceCore) -> None:
    with _client("sync", core) as client:
        prompt = _prompt(n=32)
        pid = client.store_prompt(prompt).id
        before = client.usage.copy()
        client.prompt_logits(pid, _texts(4), CANDIDATES)
        by_id = (client.usage - before).bytes_sent
        before = client.usage.copy()
        client.logits(prompt[None], _texts(4), CANDIDATES)
        sent = (client.usage - before).bytes_sent
    assert by_id < 600  # model id, 4 short texts, 2 candidate ids, JSON keys
    assert sent > prompt.nbytes * 4 / 3  # the prompt's base64


@pytest.mark.parametrize("kind", KINDS)
def test_store_by_projection_uploads_z_and_names_the_same_prompt(
    kind: str, core: ServiceCore
) -> None:
    from bbt.protocol import InitialPromptSpec, ProjectionSpec
    from bbt.protocol.projection import Projection
    from bbt.protocol.sessions import recipe_of

    client = _client(kind, core)
    info = client.model_info()
    spec = ProjectionSpec(
        seed=5, n_tokens=4, hidden_size=H, dim=16, embedding_std=info.embedding_std
    )
    z = np.random.default_rng(1).standard_normal(16).astype(np.float32)
    before = client.usage.bytes_sent
    stored = client.store_projected_prompt(
        spec, z, p0=InitialPromptSpec(token_ids=[5, 6, 7, 8]), label="by z"
    )
    if kind == "sync":
        assert client.usage.bytes_sent - before < 2_000  # z and the recipe, not n x H
    assert stored.kind == "projection"
    p0 = client.embed([5, 6, 7, 8])
    local = Projection(recipe_of(spec)).project(z[None], p0)[0]
    assert client.store_prompt(local).id == stored.id  # bitwise the same prompt
    with pytest.raises(InvalidRequestError):
        client.store_projected_prompt(spec, z[:3])


# --------------------------------------------------------------------------- pages (1.2)


@pytest.fixture
def paged(tmp_path: Path) -> Iterator[ServiceCore]:
    """A server whose list pages hold 2 prompts."""
    registry = PromptRegistry(tmp_path / "paged.sqlite3")
    settings = ServerSettings(api_keys=[SecretStr(KEY_A)], registry_page_size=2)
    yield ServiceCore(MockBackend(hidden_size=H), settings, registry)
    registry.close()


@pytest.mark.parametrize("kind", KINDS)
def test_list_prompts_follows_the_cursor_to_the_end(kind: str, paged: ServiceCore) -> None:
    client = _client(kind, paged)
    ids = [client.store_prompt(_prompt(seed=s)).id for s in range(5)]
    before = client.usage.requests
    assert [p.id for p in client.list_prompts()] == ids
    if kind != "local":
        assert client.usage.requests - before == 3  # pages of 2, 2 and 1


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_iter_prompts_fetches_a_page_at_a_time(kind: str, paged: ServiceCore) -> None:
    ids = []
    if kind == "sync":
        client = _client("sync", paged)
        ids = [client.store_prompt(_prompt(seed=s)).id for s in range(5)]
        before = client.usage.requests
        it = client.iter_prompts(page_size=3)
        assert next(it).id == ids[0]
        assert client.usage.requests - before == 1  # only the first page so far
        assert [ids[0], *(p.id for p in it)] == ids
        assert client.usage.requests - before == 2
        return

    async def run() -> list[str]:
        async with AsyncClient(
            BASE, KEY_A, transport=AsyncCoreTransport(paged), env_file=None
        ) as client:
            for s in range(5):
                ids.append((await client.store_prompt(_prompt(seed=s))).id)
            return [p.id async for p in client.iter_prompts(page_size=3)]

    assert asyncio.run(run()) == ids


def test_a_server_from_before_pages_is_listed_in_one_call(core: ServiceCore) -> None:
    """A 1.1 server sends no next_cursor (and ignores ?limit=): one request, every prompt."""
    ids = [_client("sync", core).store_prompt(_prompt(seed=s)).id for s in range(3)]
    old = Client(BASE, KEY_A, transport=_OldServer(core), env_file=None)
    assert [p.id for p in old.list_prompts()] == ids
    assert old.usage.requests == 1


class _OldServer(CoreTransport):
    """A server that answers every request in protocol 1.1, whatever the client announces."""

    def handle_request(self, request: Any) -> Any:
        request.headers["X-BBT-Protocol"] = "1.1"
        return super().handle_request(request)


@pytest.mark.parametrize("kind", KINDS)
def test_free_form_input_the_server_could_not_send_back_costs_no_request(
    kind: str, core: ServiceCore
) -> None:
    client = _client(kind, core)
    client.model_info()  # discovery is a request of its own
    before = client.usage.requests
    for recipe, label in [
        ({"note": "\ud800"}, None),
        ({"nan": float("nan")}, None),
        (None, "seed \udfff"),
    ]:
        with pytest.raises(InvalidRequestError) as info:
            client.store_prompt(_prompt(), recipe=recipe, label=label)
        assert info.value.field in ("recipe.note", "recipe.nan", "label")
    assert client.usage.requests == before
    assert client.list_prompts() == []
