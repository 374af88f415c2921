"""Cheap requests must not cost the server a lot (issue 18, item 6).

- a session's A (D x d float32) is sized from the request and refused over the per-session
  cap *before* anything is built, on the session path and on the registry's
  store-by-projection path;
- A's bytes count against the opening key's memory quota;
- eviction to make room only ever takes the opening key's own idle sessions;
- an integer literal past Python's 4,300-digit conversion limit is a 422, not a 500.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

import bbt.protocol.sessions
import bbt.server._prompts
from bbt.protocol import Tensor
from bbt.server import MockBackend, ServerSettings
from bbt.server._core import ServiceCore
from bbt.server.app import create_app
from bbt.server.registry import PromptRegistry

from .test_sessions import KEY_A, KEY_B, auth, make, open_body, open_session, z_body, zs

#: Bytes of one test session (d=6, n=3, H=64): A and p0, float32.
ONE = (6 + 1) * 3 * 64 * 4


class BuiltError(Exception):
    """Raised by the stand-in projection builder: a test that sees it built A."""


@pytest.fixture
def no_build(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Replace the projection builder on both paths; any call is recorded and fails."""
    calls: list[Any] = []

    def refuse(recipe: Any) -> Any:
        calls.append(recipe)
        raise BuiltError(f"A of {recipe.dim} x {recipe.prompt_size} was built")

    monkeypatch.setattr(bbt.protocol.sessions, "Projection", refuse)
    monkeypatch.setattr(bbt.server._prompts, "Projection", refuse)
    return calls


# --------------------------------------------------------------------------- A's size


def test_the_issue_s_session_is_refused_by_default_before_a_is_built(no_build: list[Any]) -> None:
    # n=128 (the mock's most), H=64, d=12,500: A is 409.6 MB, under the old 2 GiB bound
    # of all sessions together, so f05a715 built it (6 s of CPU) for a 121-byte request.
    client, backend, _ = make()
    body = open_body(backend.info, n_tokens=128, dim=12_500)
    r = client.post("/v1/sessions", json=body, headers=auth(KEY_A))
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "projection"
    assert "max_projection_bytes" in error["message"]
    assert "409600000" in error["message"]
    assert no_build == []


def test_the_projection_cap_is_configurable(
    no_build: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    a_bytes = 6 * 3 * 64 * 4  # D x d x 4 of the test session
    client, backend, _ = make(max_projection_bytes=a_bytes - 1)
    r = client.post("/v1/sessions", json=open_body(backend.info), headers=auth(KEY_A))
    assert r.status_code == 422, r.text
    assert f"at most {a_bytes - 1} bytes" in r.json()["error"]["message"]
    assert no_build == []
    monkeypatch.undo()  # the real builder again: at the cap exactly, the session opens
    client, backend, _ = make(max_projection_bytes=a_bytes)
    assert open_session(client, backend.info).nbytes == ONE


def test_store_by_projection_is_refused_before_a_is_built(
    no_build: list[Any], tmp_path: Path
) -> None:
    registry = PromptRegistry(tmp_path / "registry.sqlite3")
    try:
        backend = MockBackend()
        app = create_app(backend, ServerSettings(api_keys=[]), registry=registry)
        info = backend.info
        spec = open_body(info, n_tokens=128, dim=12_500)["projection"]
        z = np.zeros(12_500, np.float32)
        body = {"model": info.id, "projection": spec, "z": Tensor.from_numpy(z).model_dump()}
        r = TestClient(app).post("/v1/prompts", json=body)
        assert r.status_code == 422, r.text
        assert "max_projection_bytes" in r.json()["error"]["message"]
        assert no_build == []
    finally:
        registry.close()


# --------------------------------------------------------------------------- per-key memory


def test_a_keys_sessions_count_against_its_memory_quota() -> None:
    client, backend, clock = make(max_session_bytes_per_key=2 * ONE, session_evict_after_s=30)
    info = backend.info
    first = open_session(client, info, KEY_A).id
    clock.now += 1
    open_session(client, info, KEY_A)
    r = client.post("/v1/sessions", json=open_body(info), headers=auth(KEY_A))
    assert r.status_code == 429, r.text
    assert r.json()["error"]["type"] == "rate_limit"
    assert "max_session_bytes_per_key" in r.json()["error"]["message"]
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    open_session(client, info, KEY_B)  # the quota is per key
    clock.now += 30
    open_session(client, info, KEY_A)  # A's own idle session made room
    gone = client.post(f"/v1/sessions/{first}/logits", json=z_body(info, zs()), headers=auth(KEY_A))
    assert gone.status_code == 404


def test_a_session_larger_than_the_key_quota_is_refused_outright(no_build: list[Any]) -> None:
    client, backend, _ = make(max_session_bytes_per_key=ONE - 1)
    r = client.post("/v1/sessions", json=open_body(backend.info), headers=auth(KEY_A))
    assert r.status_code == 422, r.text
    assert "max_session_bytes_per_key" in r.json()["error"]["message"]
    assert no_build == []


# --------------------------------------------------------------------------- eviction


def test_another_keys_idle_session_is_never_evicted() -> None:
    client, backend, clock = make(max_session_bytes=2 * ONE, session_evict_after_s=10)
    info = backend.info
    a = open_session(client, info, KEY_A).id
    clock.now += 100  # A's session is idle, long past evict_after_s
    b1 = open_session(client, info, KEY_B).id
    # All session memory is in use, B's own session is busy: B waits, A keeps its session.
    r = client.post("/v1/sessions", json=open_body(info), headers=auth(KEY_B))
    assert r.status_code == 503, r.text
    assert r.json()["error"]["type"] == "unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    ok = client.post(f"/v1/sessions/{a}/logits", json=z_body(info, zs()), headers=auth(KEY_A))
    assert ok.status_code == 200, ok.text
    # Once B's own session is idle long enough, B's next open evicts that one, not A's.
    clock.now += 10
    open_session(client, info, KEY_B)
    host = client.app.state.core.sessions  # type: ignore[attr-defined]
    assert a in host.ids()
    assert b1 not in host.ids()


def test_retry_after_names_when_another_keys_session_expires() -> None:
    client, backend, clock = make(
        max_session_bytes=ONE, session_evict_after_s=10, session_idle_timeout_s=300
    )
    info = backend.info
    open_session(client, info, KEY_A)
    clock.now += 100
    r = client.post("/v1/sessions", json=open_body(info), headers=auth(KEY_B))
    assert r.status_code == 503, r.text
    assert int(r.headers["Retry-After"]) == 200  # A's session expires in 300 - 100 s


# --------------------------------------------------------------------------- huge integers


def test_an_integer_past_the_conversion_limit_in_session_logits_is_422() -> None:
    # Python refuses to convert a literal of more than 4,300 digits (int_max_str_digits):
    # json.loads raises ValueError, which f05a715 let through as a 500.
    client, backend, _ = make()
    info = backend.info
    sid = open_session(client, info).id
    huge = "9" * 4301
    text = json.dumps(z_body(info, zs(), candidate_ids=[3, 4]))
    text = text.replace('"candidate_ids": [3, 4]', f'"candidate_ids": [3, {huge}]')
    assert huge in text
    r = client.post(
        f"/v1/sessions/{sid}/logits",
        content=text.encode(),
        headers={**auth(KEY_A), "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request"
    assert "4300 digits" in r.json()["error"]["message"]


def test_the_in_process_core_answers_the_same_422_on_any_route() -> None:
    # bbt.testing's transports parse every body with the core's parser (the app parses
    # plain routes with FastAPI, which answers 400 there: a 4xx either way, never a 500).
    core = ServiceCore(MockBackend(), ServerSettings(api_keys=[]))
    text = json.dumps(open_body(core.info)).replace('"seed": 11', '"seed": ' + "9" * 5000)
    answer = core.handle("POST", "/v1/sessions", {"X-BBT-Protocol": "1.1"}, text.encode())
    assert answer.status == 422, answer.body
    assert b"4300 digits" in answer.body
