"""Shared prompts (protocol 1.4): the operator publishes, every key lists, reads, scores and
fetches them; no key changes or deletes them; a 1.3 client sees only its own prompts. Each
test runs on the FastAPI app and on the in-process core, which must answer alike."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bbt.protocol import PROTOCOL_VERSION, StoredPrompt, Tensor
from bbt.protocol.shared import PromptTensor
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app
from bbt.server.registry import PromptRegistry
from bbt.server.shared_prompts import SHARED_TENANT, merged_page, publish
from bbt.testing import CoreTransport

from .helpers import prompts, texts

KEY_A = "sk-tenant-a-0c1d2e3f"
KEY_B = "sk-tenant-b-9f8e7d6c"
H = 64
V14 = {"X-BBT-Protocol": PROTOCOL_VERSION}
V13 = {"X-BBT-Protocol": "1.3"}
META = {"source_task": "agnews-world-sports", "fingerprint": "f" * 16, "tokens": 4,
        "steps": 60, "source_accuracy": 0.91}  # fmt: skip

Made = tuple[Any, PromptRegistry]


def _app(backend: MockBackend, settings: ServerSettings, registry: PromptRegistry) -> Any:
    return TestClient(create_app(backend, settings, registry=registry))


def _core(backend: MockBackend, settings: ServerSettings, registry: PromptRegistry) -> Any:
    from bbt.server._core import ServiceCore

    core = ServiceCore(backend, settings, registry)
    return httpx.Client(base_url="http://core.test", transport=CoreTransport(core))


@pytest.fixture(params=[_app, _core], ids=["app", "core"])
def served(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Made]]:
    made: list[Made] = []

    def factory(**settings_kw: Any) -> Made:
        registry = PromptRegistry(tmp_path / f"reg{len(made)}.sqlite3")
        keys = [SecretStr(KEY_A), SecretStr(KEY_B)]
        settings = ServerSettings(api_keys=keys, **settings_kw)
        client = request.param(MockBackend(hidden_size=H, seed=0), settings, registry)
        made.append((client, registry))
        return client, registry

    yield factory
    for client, registry in made:
        client.close()
        registry.close()


def _auth(key: str, version: dict[str, str] = V14) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **version}


def _publish(registry: PromptRegistry, seed: int = 7, **meta: Any) -> tuple[str, np.ndarray]:
    prompt = prompts(1, 4, H, seed=seed)[0]
    record, created = publish(
        registry, prompt, model="bbt-mock", metadata={**META, **meta}, label="world-vs-sports"
    )
    assert created
    return record.id, prompt


def _store(client: Any, prompt: np.ndarray, key: str, version: dict[str, str] = V14) -> str:
    body = {"model": "bbt-mock", "prompt": Tensor.from_numpy(prompt).model_dump()}
    r = client.post("/v1/prompts", json=body, headers=_auth(key, version))
    assert r.status_code == 200, r.text
    return str(r.json()["id"])


def _refused(response: Any, status: int) -> Any:
    """The error of a refused request: its status, then the envelope's error object."""
    assert response.status_code == status, response.text
    return response.json()["error"]


def _logits_body(b: int = 3) -> dict[str, Any]:
    info = MockBackend(hidden_size=H, seed=0).info
    return {"model": info.id, "texts": texts(info, b), "candidate_ids": [5, 6]}


def test_every_key_lists_reads_scores_and_fetches_a_shared_prompt(
    served: Callable[..., Made],
) -> None:
    client, registry = served()
    shared_id, prompt = _publish(registry)
    own_a = _store(client, prompts(1, 4, H, seed=1)[0], KEY_A)
    for key in (KEY_A, KEY_B):
        listed = client.get("/v1/prompts", headers=_auth(key)).json()["data"]
        flags = {p["id"]: p["shared"] for p in listed}
        assert flags[shared_id] is True
        assert (own_a in flags) == (key == KEY_A)  # a key's own prompts stay its own
        if key == KEY_A:
            assert flags[own_a] is False
        meta = StoredPrompt.model_validate_json(
            client.get(f"/v1/prompts/{shared_id}", headers=_auth(key)).content
        )
        assert meta.shared
        assert meta.kind == "pretrained"
        assert meta.label == "world-vs-sports"
        assert meta.recipe == META  # the provenance the operator published
        got = client.get(f"/v1/prompts/{shared_id}/tensor", headers=_auth(key))
        assert got.status_code == 200, got.text
        tensor = PromptTensor.model_validate_json(got.content)
        assert tensor.shared
        assert tensor.sha256 == meta.sha256
        assert tensor.tensor.to_numpy().tobytes() == prompt.astype(np.float32).tobytes()
        scored = client.post(
            f"/v1/prompts/{shared_id}/logits", json=_logits_body(), headers=_auth(key)
        )
        assert scored.status_code == 200, scored.text
    # The tensor route serves a key's own prompt too, and nobody else's.
    own = client.get(f"/v1/prompts/{own_a}/tensor", headers=_auth(KEY_A)).json()
    assert own["shared"] is False
    err = _refused(client.get(f"/v1/prompts/{own_a}/tensor", headers=_auth(KEY_B)), 404)
    assert err["type"] == "not_found"


def test_no_key_can_delete_or_overwrite_a_shared_prompt(served: Callable[..., Made]) -> None:
    client, registry = served()
    shared_id, prompt = _publish(registry)
    before = registry.load(SHARED_TENANT, shared_id)
    for key in (KEY_A, KEY_B):
        err = _refused(client.delete(f"/v1/prompts/{shared_id}", headers=_auth(key)), 403)
        assert err["type"] == "permission"
        assert "read-only" in err["message"]
        assert shared_id in err["message"]
        r = client.put(f"/v1/prompts/{shared_id}", json={}, headers=_auth(key))
        assert r.status_code == 405
    # Storing the same bytes gives the key a copy of its own; the shared row is untouched.
    copy = _store(client, prompt, KEY_B)
    assert copy != shared_id
    assert client.delete(f"/v1/prompts/{copy}", headers=_auth(KEY_B)).status_code == 200
    after = registry.load(SHARED_TENANT, shared_id)
    assert before is not None
    assert after is not None
    assert after[0] == before[0]
    assert after[1].tobytes() == before[1].tobytes()
    assert client.get(f"/v1/prompts/{shared_id}", headers=_auth(KEY_A)).status_code == 200


def test_a_1_3_client_lists_and_reads_only_its_own_prompts(served: Callable[..., Made]) -> None:
    client, registry = served()
    shared_id, _ = _publish(registry)
    own = _store(client, prompts(1, 4, H, seed=2)[0], KEY_A, V13)
    for version in (V13, {}):
        body = client.get("/v1/prompts", headers=_auth(KEY_A, version)).json()
        assert [p["id"] for p in body["data"]] == [own]
        assert all("shared" not in p for p in body["data"])  # a field it does not know
        got = client.get(f"/v1/prompts/{own}", headers=_auth(KEY_A, version))
        assert got.status_code == 200
        assert "shared" not in got.json()
        assert client.delete(f"/v1/prompts/{own}", headers=_auth(KEY_A, version)).status_code == 200
        own = _store(client, prompts(1, 4, H, seed=2)[0], KEY_A, V13)
    # It is not told of the capability either; a 1.4 client is.
    caps = client.get("/v1/models", headers=_auth(KEY_A, V13)).json()["data"][0]["capabilities"]
    assert "shared_prompts" not in caps
    assert "prompt_registry" in caps
    caps = client.get("/v1/models", headers=_auth(KEY_A)).json()["data"][0]["capabilities"]
    assert "shared_prompts" in caps
    assert shared_id  # published all along, and never shown to the 1.3 client


@pytest.mark.parametrize("limit", [1, 2, 3, 10])
def test_pages_merge_own_and_shared_prompts_without_repeats(
    served: Callable[..., Made], limit: int
) -> None:
    client, registry = served()
    expected: list[str] = []
    for seed in range(6):  # interleaved in time: own, shared, own, shared...
        if seed % 2:
            expected.append(_publish(registry, seed=100 + seed)[0])
        else:
            expected.append(_store(client, prompts(1, 4, H, seed=seed)[0], KEY_A))
    seen: list[str] = []
    cursor: str | None = None
    while True:
        query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(f"/v1/prompts{query}", headers=_auth(KEY_A)).json()
        assert len(body["data"]) <= limit
        seen += [p["id"] for p in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected


def test_a_byte_bound_page_of_one_tenant_bounds_the_merged_page(tmp_path: Path) -> None:
    registry = PromptRegistry(tmp_path / "r.sqlite3")
    tenant = registry.tenant_of(KEY_A)
    order: list[str] = []
    for seed in range(6):
        prompt = prompts(1, 2, H, seed=seed)[0]
        if seed % 2:
            order.append(_publish(registry, seed=50 + seed)[0])
        else:
            big = {"notes": "n" * 2000}
            order.append(registry.put(tenant, "bbt-mock", prompt, recipe=big)[0].id)
    seen: list[str] = []
    after = None
    while True:
        rows, more = merged_page(registry, tenant, 10, after, max_bytes=1500)
        seen += [r.id for r, _ in rows]
        if not more:
            break
        after = (rows[-1][0].created_at, rows[-1][0].id)
    assert seen == order
    registry.close()


def test_publishing_needs_a_fingerprint_and_is_idempotent(tmp_path: Path) -> None:
    registry = PromptRegistry(tmp_path / "r.sqlite3")
    prompt = prompts(1, 4, H, seed=3)[0]
    with pytest.raises(ValueError, match="fingerprint"):
        publish(registry, prompt, model="bbt-mock", metadata={"source_task": "x"})
    first, created = publish(registry, prompt, model="bbt-mock", metadata=META)
    again, created_again = publish(registry, prompt, model="bbt-mock", metadata=META)
    assert created
    assert not created_again
    assert again.id == first.id
    nan = publish(
        registry, prompt + 1, model="bbt-mock", metadata={**META, "source_accuracy": float("nan")}
    )
    assert "source_accuracy" not in nan[0].recipe
    registry.close()
