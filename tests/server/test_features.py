"""The features operation on the server (protocol 1.3): ``/v1/features`` and its session
twin, on the mock and a tiny random Hugging Face causal LM (the real MiniLM runs in the
shipped contract, tests/server/test_contract.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bbt.protocol import (
    FEATURES_CAPABILITY,
    FRAME_CONTENT_TYPE,
    PROTOCOL_HEADER,
    FeaturesResponse,
    InitialPromptSpec,
    ProjectionSpec,
    SessionFeaturesRequest,
    SessionInfo,
    SessionOpenRequest,
    Tensor,
    encode_frame,
)
from bbt.protocol.projection import Projection
from bbt.protocol.sessions import recipe_of
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app
from bbt.server.backend import Features, supports

from .helpers import assert_envelope, prompts, texts

V13 = {PROTOCOL_HEADER: "1.3"}


def _post(client: TestClient, path: str, body: dict[str, Any]) -> np.ndarray[Any, Any]:
    r = client.post(path, json=body, headers=V13)
    assert r.status_code == 200, r.text
    return FeaturesResponse.model_validate_json(r.content).features.to_numpy()


@pytest.fixture(scope="module")
def served() -> tuple[TestClient, MockBackend]:
    backend = MockBackend()
    return TestClient(create_app(backend, ServerSettings(api_keys=[]))), backend


@pytest.mark.parametrize("pooling", ["mean", "mask"])
def test_mock_features_have_the_hidden_width_and_follow_the_prompt(
    served: tuple[TestClient, MockBackend], pooling: str
) -> None:
    client, backend = served
    info = backend.info
    assert supports(backend, Features)
    body: dict[str, Any] = {"model": info.id, "texts": texts(info, 4), "pooling": pooling}
    bare = _post(client, "/v1/features", body)
    assert bare.shape == (1, 4, info.hidden_size)
    assert bare.dtype == np.float32
    # An empty prompt [1, 0, H] is no prompt at all.
    body["prompts"] = Tensor.from_numpy(np.zeros((1, 0, info.hidden_size), np.float32)).model_dump()
    np.testing.assert_array_equal(_post(client, "/v1/features", body), bare)
    p = prompts(3, 2, info.hidden_size, scale=1.0)
    body["prompts"] = Tensor.from_numpy(p).model_dump()
    feats = _post(client, "/v1/features", body)
    assert feats.shape == (3, 4, info.hidden_size)
    assert not np.allclose(feats[0], feats[1])
    direct, usage = backend.features(p, texts(info, 4), pooling)  # type: ignore[arg-type]
    np.testing.assert_array_equal(feats, direct)
    assert (usage.prompts, usage.sequences) == (3, 12)


def test_mean_and_mask_pooling_differ_on_the_mock(served: tuple[TestClient, MockBackend]) -> None:
    _, backend = served
    p = prompts(1, 2, backend.info.hidden_size, scale=1.0)
    mean, _ = backend.features(p, texts(backend.info, 3), "mean")
    mask, _ = backend.features(p, texts(backend.info, 3), "mask")
    assert not np.allclose(mean, mask)


def test_a_server_without_features_answers_404_naming_the_capability() -> None:
    backend = MockBackend(features=False)
    assert not supports(backend, Features)
    client = TestClient(create_app(backend, ServerSettings(api_keys=[])))
    body = {"model": backend.info.id, "texts": texts(backend.info, 1)}
    env = assert_envelope(client.post("/v1/features", json=body), 404)
    assert FEATURES_CAPABILITY in env.error.message
    assert env.error.field == "model"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"pooling": "max"}, "pooling"),
        ({"texts": ["no mask here"]}, "texts.0"),
        ({"prompts": Tensor.from_numpy(np.zeros((1, 2, 8), np.float32)).model_dump()}, "prompts"),
        ({"model": "nope"}, "model"),
    ],
    ids=["pooling", "mask", "width", "model"],
)
def test_bad_features_requests_are_one_clear_error(
    served: tuple[TestClient, MockBackend], body: dict[str, Any], field: str
) -> None:
    client, backend = served
    full = {"model": backend.info.id, "texts": texts(backend.info, 1), **body}
    r = client.post("/v1/features", json=full)
    env = assert_envelope(r)
    assert r.status_code in (400, 404, 422)
    assert (env.error.field or "").startswith(field)


def _open(client: TestClient, backend: MockBackend) -> SessionInfo:
    spec = ProjectionSpec(
        seed=3, n_tokens=4, hidden_size=64, dim=5, embedding_std=backend.info.embedding_std
    )
    req = SessionOpenRequest(
        model=backend.info.id, projection=spec, p0=InitialPromptSpec(token_ids=[7, 8, 7, 8])
    )
    r = client.post("/v1/sessions", json=req.model_dump(mode="json", exclude_none=True))
    assert r.status_code == 200, r.text
    return SessionInfo.model_validate_json(r.content)


def test_session_features_are_those_of_the_projected_prompts(
    served: tuple[TestClient, MockBackend],
) -> None:
    client, backend = served
    opened = _open(client, backend)
    z = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    body = {"z": Tensor.from_numpy(z).model_dump(), "texts": texts(backend.info, 2)}
    got = _post(client, f"/v1/sessions/{opened.id}/features", body)
    p0 = backend.embed(np.asarray([7, 8, 7, 8]))
    want, _ = backend.features(
        Projection(recipe_of(opened.projection)).project(z, p0), texts(backend.info, 2), "mean"
    )
    np.testing.assert_array_equal(got, want)
    # The same call as a binary frame (z's bytes, no base64).
    empty = Tensor(dtype="float32", shape=[3, 5], data="")
    header = SessionFeaturesRequest(z=empty, texts=texts(backend.info, 2))
    r = client.post(
        f"/v1/sessions/{opened.id}/features",
        content=encode_frame(header, z.astype("<f4").tobytes()),
        headers={**V13, "content-type": FRAME_CONTENT_TYPE},
    )
    assert r.status_code == 200, r.text
    np.testing.assert_array_equal(
        FeaturesResponse.model_validate_json(r.content).features.to_numpy(), want
    )
    bad = {**body, "z": Tensor.from_numpy(z[:, :4]).model_dump()}
    env = assert_envelope(client.post(f"/v1/sessions/{opened.id}/features", json=bad), 422)
    assert env.error.field == "z.shape"


def test_the_openapi_document_lists_the_features_routes(
    served: tuple[TestClient, MockBackend],
) -> None:
    doc = served[0].get("/openapi.json").json()
    assert "/v1/features" in doc["paths"]
    assert "/v1/sessions/{session_id}/features" in doc["paths"]
    assert "SessionFeaturesRequest" in doc["components"]["schemas"]


@pytest.mark.skipif(
    any(importlib.util.find_spec(n) is None for n in ("torch", "transformers", "tokenizers")),
    reason="needs bbt[serve]",
)
def test_tiny_causal_lm_mean_pools_its_own_tokens_only(tmp_path: Path) -> None:
    """Mean pooling leaves out padding and the soft prompt: a text scores the same alone
    as in a batch of longer ones, and equals the mean over its positions run by hand."""
    import torch

    from bbt.server.hf_causal import HFCausalBackend
    from bbt.testing.tiny_models import build_tiny_causal_lm

    backend = HFCausalBackend(build_tiny_causal_lm(tmp_path / "gpt2", "gpt2"), num_threads=1)
    h = backend.info.hidden_size
    batch = ["a short one", "a much longer text than the first one here", "mid sized text"]
    p = prompts(2, 3, h, scale=0.5)
    mean, usage = backend.features(p, batch, "mean")
    last, _ = backend.features(p, batch, "mask")
    assert mean.shape == last.shape == (2, 3, h)
    assert usage.sequences == 6
    alone, _ = backend.features(p[1:], batch[:1], "mean")
    np.testing.assert_allclose(alone[0, 0], mean[1, 0], rtol=1e-4, atol=1e-5)
    ids = backend.encode(batch[0], 3).ids
    with torch.inference_mode():
        emb = backend._word_emb[torch.tensor(ids)]
        at = len(backend.bos_ids)
        x = torch.cat([emb[:at], torch.from_numpy(p[1]), emb[at:]])[None]
        states = backend._encoder(inputs_embeds=x, use_cache=False).last_hidden_state[0]
    own = torch.cat([states[:at], states[at + 3 :]]).mean(dim=0).numpy()
    np.testing.assert_allclose(mean[1, 0], own, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(last[1, 0], states[-1].numpy(), rtol=1e-4, atol=1e-5)
    backend.close()
