"""Deep projection sessions (protocol 1.5) over HTTP on the mock: discovery, bitwise the
deep prompts' logits (whole z or the varying layers only), and the checks of a request."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bbt.protocol import (
    DEEP_SESSIONS_CAPABILITY,
    LogitsResponse,
    ModelInfo,
    ProjectionSpec,
    SessionInfo,
    SessionOpenRequest,
    Tensor,
)
from bbt.protocol.deep_sessions import deep_fingerprint
from bbt.protocol.projection import Projection
from bbt.protocol.sessions import recipe_of
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app

from .helpers import texts

LAYERS, N, D = 3, 2, 5
V15 = {"X-BBT-Protocol": "1.5"}


def make(layers: int = LAYERS) -> tuple[TestClient, MockBackend]:
    backend = MockBackend(num_layers=layers)
    return TestClient(create_app(backend, ServerSettings(api_keys=[]))), backend


def specs(info: ModelInfo, layers: int = LAYERS) -> list[ProjectionSpec]:
    std = info.layer_std or [info.embedding_std] * layers
    return [
        ProjectionSpec(
            seed=20 + k, n_tokens=N, hidden_size=info.hidden_size, dim=D, embedding_std=std[k]
        )
        for k in range(layers)
    ]


def open_deep(
    client: TestClient, info: ModelInfo, layer_p0: np.ndarray[Any, Any] | None = None, **kw: Any
) -> Any:
    s = specs(info)
    req = SessionOpenRequest(
        model=info.id,
        projection=s[0],
        layers=kw.pop("layers", s[1:]),
        layer_p0=Tensor.from_numpy(layer_p0) if layer_p0 is not None else None,
    )
    body = req.model_dump(mode="json", exclude_none=True)
    return client.post("/v1/sessions", json=body, headers=V15)


def logits_of(client: TestClient, path: str, body: dict[str, Any]) -> np.ndarray[Any, Any]:
    r = client.post(path, json=body, headers=V15)
    assert r.status_code == 200, r.text
    return LogitsResponse.model_validate_json(r.content).logits.to_numpy()


def test_the_capability_is_offered_with_deep_prompts_and_hidden_from_older_clients() -> None:
    client, _ = make()
    for version, shown in (("1.3", False), ("1.5", True)):
        r = client.get("/v1/models", headers={"X-BBT-Protocol": version})
        caps = r.json()["data"][0]["capabilities"]
        assert (DEEP_SESSIONS_CAPABILITY in caps) is shown
    shallow, _ = make(layers=1)
    caps = shallow.get("/v1/models", headers=V15).json()["data"][0]["capabilities"]
    assert DEEP_SESSIONS_CAPABILITY not in caps


def test_deep_session_logits_are_bitwise_those_of_the_deep_prompts() -> None:
    client, backend = make()
    info = backend.info
    rng = np.random.default_rng(0)
    lp0 = (rng.standard_normal((LAYERS - 1, N, info.hidden_size)) * 0.01).astype(np.float32)
    r = open_deep(client, info, lp0)
    assert r.status_code == 200, r.text
    opened = SessionInfo.model_validate_json(r.content)
    projections = [Projection(recipe_of(s)) for s in specs(info)]
    assert opened.fingerprint == deep_fingerprint([p.fingerprint() for p in projections])
    assert opened.layers == specs(info)[1:]
    z = rng.standard_normal((4, LAYERS * D)).astype(np.float32)
    p0 = np.concatenate([np.zeros((1, N, info.hidden_size), np.float32), lp0])
    prompts = np.stack(
        [p.project(z[:, k * D : (k + 1) * D]) for k, p in enumerate(projections)], axis=1
    )
    prompts += p0
    common = {"texts": texts(info, 2), "candidate_ids": [3, 4]}
    want = logits_of(
        client,
        "/v1/logits",
        {"model": info.id, "prompts": Tensor.from_numpy(prompts).model_dump(), **common},
    )
    path = f"/v1/sessions/{opened.id}/logits"
    whole = logits_of(client, path, {"z": Tensor.from_numpy(z).model_dump(), **common})
    np.testing.assert_array_equal(whole, want)
    # Layer 1 varies, the others are shared: only its columns per candidate.
    z[:, :D] = z[0, :D]
    z[:, 2 * D :] = z[0, 2 * D :]
    prompts = np.stack(
        [p.project(z[:, k * D : (k + 1) * D]) for k, p in enumerate(projections)], axis=1
    )
    prompts += p0
    want = logits_of(
        client,
        "/v1/logits",
        {"model": info.id, "prompts": Tensor.from_numpy(prompts).model_dump(), **common},
    )
    held = z[0].copy()
    held[D : 2 * D] = 0.0
    split = {
        "z": Tensor.from_numpy(np.ascontiguousarray(z[:, D : 2 * D])).model_dump(),
        "varying": [1],
        "held": Tensor.from_numpy(held).model_dump(),
        **common,
    }
    np.testing.assert_array_equal(logits_of(client, path, split), want)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"varying": [1]}, "held"),
        ({"varying": [2, 1], "held": None}, "varying"),
        ({"varying": [3], "held": None}, "varying"),
        ({"z_cols": 2 * D}, "z.shape"),
    ],
)
def test_bad_deep_requests_are_422(change: dict[str, Any], field: str) -> None:
    client, backend = make()
    info = backend.info
    sid = SessionInfo.model_validate_json(open_deep(client, info).content).id
    cols = change.pop("z_cols", D)
    body: dict[str, Any] = {
        "z": Tensor.from_numpy(np.zeros((2, cols), np.float32)).model_dump(),
        "texts": texts(info, 1),
        "candidate_ids": [3],
    }
    if "held" in change:
        change["held"] = Tensor.from_numpy(np.zeros(LAYERS * D, np.float32)).model_dump()
    body.update(change)
    r = client.post(f"/v1/sessions/{sid}/logits", json=body, headers=V15)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_a_deep_open_needs_every_layer_and_a_deep_model() -> None:
    client, backend = make()
    info = backend.info
    r = open_deep(client, info, layers=specs(info)[1:2])
    assert r.status_code == 422
    assert "layers" in r.text
    shallow, sb = make(layers=1)
    r = open_deep(shallow, sb.info, layers=specs(sb.info, 1) * 2)
    assert r.status_code == 422
    assert "deep" in r.text
