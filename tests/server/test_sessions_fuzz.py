"""Adversarial session requests never crash the app: a 2xx that follows the protocol or a
4xx envelope, never a 5xx, on both the FastAPI app and the in-process core."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import httpx
import numpy as np
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbt.protocol import ErrorEnvelope, LogitsResponse, SessionInfo
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app
from bbt.testing import CoreTransport

BACKEND = MockBackend(hidden_size=16)
INFO = BACKEND.info
SETTINGS = ServerSettings(api_keys=[], max_body_bytes=256 * 1024, max_session_bytes=1 << 20)
V11 = {"X-BBT-Protocol": "1.1"}
FUZZ = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SPEC = {"seed": 1, "n_tokens": 2, "hidden_size": 16, "dim": 3, "embedding_std": 0.05}


def _clients() -> list[Any]:
    return [
        TestClient(create_app(BACKEND, SETTINGS)),
        httpx.Client(transport=CoreTransport(BACKEND, SETTINGS), base_url="http://core"),
    ]


CLIENTS = _clients()


def _session(client: Any) -> str:
    r = client.post("/v1/sessions", json={"model": INFO.id, "projection": SPEC}, headers=V11)
    assert r.status_code == 200, r.text
    return str(SessionInfo.model_validate_json(r.content).id)


def _ok(response: Any, model: Any) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        ErrorEnvelope.model_validate_json(response.content)
    else:
        model.model_validate_json(response.content)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    projection=st.fixed_dictionaries(
        {},
        optional={
            "recipe": st.sampled_from(["bbt-projection/1", "x", ""]),
            "seed": st.integers(-5, 2**70),
            "n_tokens": st.integers(-2, 10**6),
            "hidden_size": st.sampled_from([16, 0, 17, 10**9]),
            "dim": st.integers(-2, 10**9),
            "distribution": st.sampled_from(["normal", "uniform", "cauchy"]),
            "alpha": st.floats(allow_nan=True, allow_infinity=True),
            "sigma": st.floats(allow_nan=True, allow_infinity=True),
            "embedding_std": st.floats(allow_nan=True, allow_infinity=True),
        },
    ),
    p0=json_values,
)
def test_random_opens_never_5xx(projection: dict[str, Any], p0: Any) -> None:
    body = json.dumps({"model": INFO.id, "projection": projection, "p0": p0})
    for client in CLIENTS:
        r = client.post(
            "/v1/sessions", content=body, headers={**V11, "Content-Type": "application/json"}
        )
        _ok(r, SessionInfo)
        if r.status_code == 200:  # free the key's session slots for the next example
            sid = SessionInfo.model_validate_json(r.content).id
            client.delete(f"/v1/sessions/{sid}", headers=V11)


@FUZZ
@given(
    shape=st.lists(st.integers(-1, 70), max_size=3),
    values=st.lists(
        st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=0, max_size=80
    ),
    framed=st.booleans(),
    extra=st.binary(max_size=8),
)
def test_random_z_never_5xx(
    shape: list[int], values: list[float], framed: bool, extra: bytes
) -> None:
    payload = np.asarray(values, dtype="<f4").tobytes() + extra
    texts = [f"good . It was {INFO.mask_token} ."]
    for client in CLIENTS:
        sid = _session(client)
        path = f"/v1/sessions/{sid}/logits"
        if framed:
            head = json.dumps(
                {
                    "z": {"dtype": "float32", "shape": shape, "data": ""},
                    "texts": texts,
                    "candidate_ids": [3],
                }
            ).encode()
            body = struct.pack("<I", len(head)) + head + payload
            ctype = "application/vnd.bbt.frame"
        else:
            data = base64.b64encode(payload).decode()
            body = json.dumps(
                {
                    "z": {"dtype": "float32", "shape": shape, "data": data},
                    "texts": texts,
                    "candidate_ids": [3],
                }
            ).encode()
            ctype = "application/json"
        r = client.post(path, content=body, headers={**V11, "Content-Type": ctype})
        _ok(r, LogitsResponse)
        client.delete(f"/v1/sessions/{sid}", headers=V11)


@FUZZ
@given(
    body=st.binary(max_size=64),
    session_id=st.text(
        st.characters(min_codepoint=33, max_codepoint=0x2FFF, exclude_characters="\x7f#?"),
        max_size=40,
    ),
)
def test_random_bytes_and_ids_never_5xx(body: bytes, session_id: str) -> None:
    for client in CLIENTS:
        for ctype in ("application/vnd.bbt.frame", "application/json"):
            r = client.post(
                f"/v1/sessions/{session_id.replace('/', '_')}/logits",
                content=body,
                headers={**V11, "Content-Type": ctype},
            )
            assert r.status_code < 500, r.text


def test_a_projection_scale_beyond_float32_is_a_4xx() -> None:
    # Found by the fuzz above: alpha * embedding_std of 3e50 made A's float32 cast overflow.
    spec = {**SPEC, "alpha": 1.7e25, "embedding_std": 1.7e25}
    for client in CLIENTS:
        r = client.post("/v1/sessions", json={"model": INFO.id, "projection": spec}, headers=V11)
        assert r.status_code == 422, r.text
        assert "float32" in ErrorEnvelope.model_validate_json(r.content).error.message
