"""Projection sessions in the app (protocol 1.1): results, tenants, bounds, bad input."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bbt.protocol import (
    InitialPromptSpec,
    LogitsResponse,
    ModelInfo,
    ProjectionSpec,
    SessionInfo,
    SessionOpenRequest,
    Tensor,
)
from bbt.protocol.projection import Projection
from bbt.protocol.sessions import recipe_of
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app

from .helpers import texts

KEY_A, KEY_B = "key-of-tenant-a", "key-of-tenant-b"
V11 = {"X-BBT-Protocol": "1.1"}


def auth(key: str) -> dict[str, str]:
    return {**V11, "Authorization": f"Bearer {key}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(**settings: Any) -> tuple[TestClient, MockBackend, Clock]:
    settings.setdefault("api_keys", [SecretStr(KEY_A), SecretStr(KEY_B)])
    backend = MockBackend()
    app = create_app(backend, ServerSettings(**settings))
    clock = Clock()
    app.state.core.sessions._clock = clock
    return TestClient(app), backend, clock


def spec(info: ModelInfo, **kw: Any) -> ProjectionSpec:
    base: dict[str, Any] = {
        "seed": 11,
        "n_tokens": 3,
        "hidden_size": info.hidden_size,
        "dim": 6,
        "embedding_std": info.embedding_std,
    }
    return ProjectionSpec(**{**base, **kw})


def open_body(info: ModelInfo, p0: InitialPromptSpec | None = None, **kw: Any) -> dict[str, Any]:
    req = SessionOpenRequest(
        model=info.id, projection=spec(info, **kw), p0=p0 or InitialPromptSpec()
    )
    return req.model_dump(mode="json", exclude_none=True)


def open_session(client: TestClient, info: ModelInfo, key: str = KEY_A, **kw: Any) -> SessionInfo:
    r = client.post("/v1/sessions", json=open_body(info, **kw), headers=auth(key))
    assert r.status_code == 200, r.text
    return SessionInfo.model_validate_json(r.content)


def z_body(info: ModelInfo, z: Any, b: int = 2, **kw: Any) -> dict[str, Any]:
    tensor = z if isinstance(z, dict) else Tensor.from_numpy(np.asarray(z)).model_dump()
    return {"z": tensor, "texts": texts(info, b), "candidate_ids": [3, 4], **kw}


def zs(p: int = 4, d: int = 6, seed: int = 0) -> np.ndarray[Any, Any]:
    return np.random.default_rng(seed).standard_normal((p, d)).astype(np.float32)


@pytest.fixture
def served() -> tuple[TestClient, MockBackend, Clock]:
    return make()


# --------------------------------------------------------------------------- results


@pytest.mark.parametrize(
    "p0",
    [
        None,
        InitialPromptSpec(token_ids=[7, 8, 9]),
        InitialPromptSpec(text="great movie"),
        InitialPromptSpec(
            tensor=Tensor.from_numpy(np.full((3, 64), 0.02, np.float32))  # mock: H = 64
        ),
    ],
    ids=["zeros", "token_ids", "text", "tensor"],
)
def test_session_logits_are_bitwise_those_of_the_projected_prompts(
    served: tuple[TestClient, MockBackend, Clock], p0: InitialPromptSpec | None
) -> None:
    client, backend, _ = served
    info = backend.info
    r = client.post("/v1/sessions", json=open_body(info, p0), headers=auth(KEY_A))
    assert r.status_code == 200, r.text
    opened = SessionInfo.model_validate_json(r.content)
    projection = Projection(recipe_of(opened.projection))
    assert opened.fingerprint == projection.fingerprint()
    assert opened.nbytes == (6 + 1) * 3 * info.hidden_size * 4
    if p0 is None:
        base = np.zeros((3, info.hidden_size), np.float32)
    elif p0.token_ids is not None:
        base = backend.embed(np.asarray(p0.token_ids))
    elif p0.text is not None:
        ids = backend.tokenize([p0.text])[0][0]
        base = backend.embed(np.asarray([ids[i % len(ids)] for i in range(3)]))
    else:
        assert p0.tensor is not None
        base = p0.tensor.to_numpy()
    z = zs()
    got = client.post(f"/v1/sessions/{opened.id}/logits", json=z_body(info, z), headers=auth(KEY_A))
    assert got.status_code == 200, got.text
    logits = LogitsResponse.model_validate_json(got.content)
    prompts = projection.project(z, base)
    full = client.post(
        "/v1/logits",
        json={
            "model": info.id,
            "prompts": Tensor.from_numpy(prompts).model_dump(),
            "texts": texts(info, 2),
            "candidate_ids": [3, 4],
        },
        headers=auth(KEY_A),
    )
    assert full.status_code == 200
    want = LogitsResponse.model_validate_json(full.content)
    np.testing.assert_array_equal(logits.logits.to_numpy(), want.logits.to_numpy())
    assert logits.usage == want.usage


def test_ids_are_unguessable_and_distinct(served: tuple[TestClient, MockBackend, Clock]) -> None:
    client, backend, _ = served
    ids = {open_session(client, backend.info, key).id for key in (KEY_A, KEY_B)}
    assert len(ids) == 2
    assert all(len(i) >= 32 for i in ids)


def test_close_frees_the_session(served: tuple[TestClient, MockBackend, Clock]) -> None:
    client, backend, _ = served
    sid = open_session(client, backend.info).id
    host = client.app.state.core.sessions  # type: ignore[attr-defined]
    assert host.total_bytes > 0
    r = client.delete(f"/v1/sessions/{sid}", headers=auth(KEY_A))
    assert r.status_code == 200
    assert r.json() == {"id": sid, "closed": True}
    assert host.total_bytes == 0
    again = client.delete(f"/v1/sessions/{sid}", headers=auth(KEY_A))
    assert again.status_code == 404
    assert again.json()["error"]["type"] == "session_not_found"


# --------------------------------------------------------------------------- tenants


def test_another_key_cannot_use_or_close_a_session(
    served: tuple[TestClient, MockBackend, Clock],
) -> None:
    client, backend, _ = served
    info = backend.info
    sid = open_session(client, info, KEY_A).id
    for method, path, body in (
        ("POST", f"/v1/sessions/{sid}/logits", z_body(info, zs())),
        ("DELETE", f"/v1/sessions/{sid}", None),
    ):
        r = client.request(method, path, json=body, headers=auth(KEY_B))
        assert r.status_code == 404
        # Exactly what an unknown id gets: B cannot even learn that the id exists.
        unknown = client.request(
            method, path.replace(sid, "x" * len(sid)), json=body, headers=auth(KEY_B)
        )
        assert r.json() == unknown.json()
    ok = client.post(f"/v1/sessions/{sid}/logits", json=z_body(info, zs()), headers=auth(KEY_A))
    assert ok.status_code == 200


def test_the_session_keeps_a_hash_of_the_key_never_the_key(
    served: tuple[TestClient, MockBackend, Clock],
) -> None:
    client, backend, _ = served
    open_session(client, backend.info, KEY_A)
    host = client.app.state.core.sessions  # type: ignore[attr-defined]
    (session,) = host._sessions.values()
    stored = repr(vars(session)) + json.dumps(session.info.model_dump(mode="json"))
    assert KEY_A not in stored
    assert session.tenant
    assert session.tenant != KEY_A


def test_with_auth_off_everyone_is_one_tenant() -> None:
    client, backend, _ = make(api_keys=[])
    sid = open_session(client, backend.info).id
    r = client.post(f"/v1/sessions/{sid}/logits", json=z_body(backend.info, zs()), headers=V11)
    assert r.status_code == 200


# --------------------------------------------------------------------------- lifecycle


def test_an_idle_session_expires() -> None:
    client, backend, clock = make(session_idle_timeout_s=60)
    info = backend.info
    sid = open_session(client, info).id
    clock.now += 59
    path = f"/v1/sessions/{sid}/logits"
    assert client.post(path, json=z_body(info, zs()), headers=auth(KEY_A)).status_code == 200
    clock.now += 59  # each call restarts the idle clock
    assert client.post(path, json=z_body(info, zs()), headers=auth(KEY_A)).status_code == 200
    clock.now += 60
    r = client.post(path, json=z_body(info, zs()), headers=auth(KEY_A))
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "session_not_found"


def test_the_per_key_bound_evicts_an_idle_session_or_answers_429() -> None:
    client, backend, clock = make(max_sessions_per_key=2, session_evict_after_s=30)
    info = backend.info
    first = open_session(client, info).id
    clock.now += 1
    open_session(client, info)
    r = client.post("/v1/sessions", json=open_body(info), headers=auth(KEY_A))
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit"
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    assert open_session(client, info, KEY_B).id  # the bound is per key
    clock.now += 30  # the first is now idle long enough to make room
    open_session(client, info)
    gone = client.post(f"/v1/sessions/{first}/logits", json=z_body(info, zs()), headers=auth(KEY_A))
    assert gone.status_code == 404


def test_the_memory_bound_answers_503_with_retry_after() -> None:
    one = (6 + 1) * 3 * 64 * 4
    client, backend, clock = make(max_session_bytes=2 * one, session_evict_after_s=10)
    info = backend.info
    open_session(client, info, KEY_A)
    open_session(client, info, KEY_B)
    r = client.post("/v1/sessions", json=open_body(info), headers=auth(KEY_A))
    assert r.status_code == 503
    assert r.json()["error"]["type"] == "unavailable"
    assert int(r.headers["Retry-After"]) >= 1
    clock.now += 10
    open_session(client, info, KEY_A)  # the least recently used was evicted
    host = client.app.state.core.sessions  # type: ignore[attr-defined]
    assert host.total_bytes == 2 * one
    assert host.evicted == 1


def test_a_session_larger_than_the_memory_bound_is_refused_outright() -> None:
    client, backend, _ = make(max_session_bytes=1000)
    r = client.post("/v1/sessions", json=open_body(backend.info), headers=auth(KEY_A))
    assert r.status_code == 422
    assert "holds at most 1000 bytes" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"recipe": "bbt-projection/9"}, "projection.recipe", "not implemented"),
        ({"hidden_size": 65}, "projection.hidden_size", "hidden size"),
        ({"n_tokens": 129}, "projection.n_tokens", "at most"),
        ({"dim": 100_001}, "projection.dim", "at most"),
        ({"seed": -1}, "projection.seed", "greater"),
        ({"sigma": 0}, "projection.sigma", "greater"),
        ({"distribution": "cauchy"}, "projection.distribution", "normal"),
    ],
)
def test_bad_recipes_are_422(
    served: tuple[TestClient, MockBackend, Clock], change: dict[str, Any], field: str, words: str
) -> None:
    client, backend, _ = served
    body = open_body(backend.info)
    body["projection"].update(change)
    r = client.post("/v1/sessions", json=body, headers=auth(KEY_A))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field
    assert words in r.json()["error"]["message"]


@pytest.mark.parametrize(
    ("p0", "field"),
    [
        ({"token_ids": [1, 2]}, "p0.token_ids"),
        ({"token_ids": [1, 2, 10**6]}, "p0.token_ids.2"),
        ({"text": "   "}, "p0.text"),
        ({"text": "\ud800"}, "p0.text"),
        ({"token_ids": [1, 2, 3], "text": "a"}, "p0"),
        ({"tensor": {"dtype": "float32", "shape": [2, 64], "data": ""}}, "p0.tensor.shape"),
        ({"tensor": {"dtype": "float32", "shape": [3, 64], "data": "AAAA"}}, "p0.tensor.data"),
    ],
)
def test_bad_initial_prompts_are_422(
    served: tuple[TestClient, MockBackend, Clock], p0: dict[str, Any], field: str
) -> None:
    client, backend, _ = served
    body = open_body(backend.info)
    body["p0"] = p0
    # json.dumps escapes a lone surrogate (as a hostile client would send it).
    raw = json.dumps(body).encode()
    r = client.post(
        "/v1/sessions", content=raw, headers={**auth(KEY_A), "Content-Type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def _nonfinite(value: float) -> np.ndarray[Any, Any]:
    z = zs()
    z[1, 2] = value
    return z


@pytest.mark.parametrize(
    ("z", "field"),
    [
        (zs(d=5), "z.shape"),
        (zs(d=7), "z.shape"),
        (zs(p=65), "z.shape"),
        (np.zeros((0, 6), np.float32), "z.shape"),
        (np.zeros((2, 6, 1), np.float32), "z.shape"),
        (_nonfinite(np.nan), "z.data"),
        (_nonfinite(np.inf), "z.data"),
        (_nonfinite(-np.inf), "z.data"),
        (_nonfinite(1e30), "z.data"),
        (_nonfinite(3e5), "z.data"),  # z fine, but the prompt it makes is not
        ({"dtype": "float32", "shape": [2, 6], "data": "not base64!"}, "z.data"),
        ({"dtype": "float32", "shape": [2, 6], "data": "AAAA"}, "z.data"),
        ({"dtype": "int8", "shape": [2, 6], "data": ""}, "z.dtype"),
    ],
)
def test_malformed_z_is_4xx_never_5xx(
    served: tuple[TestClient, MockBackend, Clock], z: Any, field: str
) -> None:
    client, backend, _ = served
    info = backend.info
    sid = open_session(client, info).id
    r = client.post(f"/v1/sessions/{sid}/logits", json=z_body(info, z), headers=auth(KEY_A))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def test_other_session_request_faults_are_4xx(
    served: tuple[TestClient, MockBackend, Clock],
) -> None:
    client, backend, _ = served
    info = backend.info
    sid = open_session(client, info).id
    path = f"/v1/sessions/{sid}/logits"
    cases = [
        client.post(path, json=z_body(info, zs(), candidate_ids=[10**6]), headers=auth(KEY_A)),
        client.post(path, json={**z_body(info, zs()), "texts": ["no mask"]}, headers=auth(KEY_A)),
        client.post(path, content=b"{oops", headers=auth(KEY_A)),
        client.post(path, json={**z_body(info, zs()), "extra": 1}, headers=auth(KEY_A)),
        client.get(path, headers=auth(KEY_A)),
        client.post(path, json=z_body(info, zs())),  # no key
        client.post(
            "/v1/sessions", json={**open_body(info), "model": "other"}, headers=auth(KEY_A)
        ),
    ]
    assert [r.status_code for r in cases] == [422, 422, 400, 422, 405, 401, 404]


# --------------------------------------------------------------------------- binary frames


def _frame(header: dict[str, Any], payload: bytes) -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(4, "little") + head + payload


FRAME = {**V11, "Content-Type": "application/vnd.bbt.frame"}


def test_a_framed_z_gives_the_json_answer(served: tuple[TestClient, MockBackend, Clock]) -> None:
    client, backend, _ = served
    info = backend.info
    sid = open_session(client, info).id
    z = zs()
    path = f"/v1/sessions/{sid}/logits"
    as_json = client.post(path, json=z_body(info, z), headers=auth(KEY_A))
    header = z_body(info, {"dtype": "float32", "shape": [4, 6], "data": ""})
    framed = client.post(
        path,
        content=_frame(header, z.astype("<f4").tobytes()),
        headers={**FRAME, "Authorization": f"Bearer {KEY_A}"},
    )
    assert framed.status_code == 200, framed.text
    assert framed.content == as_json.content


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"\x01\x00", 400),
        ((10**6).to_bytes(4, "little") + b"{}", 400),
        (_frame({"z": 1}, b""), 422),
        ((5).to_bytes(4, "little") + b"{oops" + b"x" * 8, 400),
        (
            _frame({"z": {"dtype": "float32", "shape": [4, 6], "data": ""}, "texts": ["x"]}, b""),
            422,
        ),
    ],
)
def test_malformed_frames_are_4xx(
    served: tuple[TestClient, MockBackend, Clock], body: bytes, status: int
) -> None:
    client, backend, _ = served
    sid = open_session(client, backend.info).id
    r = client.post(
        f"/v1/sessions/{sid}/logits",
        content=body,
        headers={**FRAME, "Authorization": f"Bearer {KEY_A}"},
    )
    assert r.status_code == status, r.text


@pytest.mark.parametrize(
    ("data", "payload"),
    [("", b"\x00" * 95), ("", b"\x00" * 97), ("AAAA", b"\x00" * 96), ("", b"")],
)
def test_a_frame_whose_payload_does_not_match_its_shape_is_422(
    served: tuple[TestClient, MockBackend, Clock], data: str, payload: bytes
) -> None:
    client, backend, _ = served
    info = backend.info
    sid = open_session(client, info).id
    header = z_body(info, {"dtype": "float32", "shape": [4, 6], "data": data})
    r = client.post(
        f"/v1/sessions/{sid}/logits",
        content=_frame(header, payload),
        headers={**FRAME, "Authorization": f"Bearer {KEY_A}"},
    )
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "z.data"
