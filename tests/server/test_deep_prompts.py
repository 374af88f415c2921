"""Deep prompts [P, L, n, H] (BBTv2) on the protocol, the mock and the app: validation,
refusal by a server without the capability, and layer-by-layer injection in the mock.

The Hugging Face backend's injection is tested in ``test_deep_prompts_hf.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from bbt.client import LocalClient
from bbt.errors import InvalidRequestError
from bbt.protocol import (
    DEEP_PROMPTS,
    FEATURES_CAPABILITY,
    PROTOCOL_HEADER,
    PROTOCOL_V1,
    PROTOCOL_VERSION,
    LogitsRequest,
    ModelInfo,
    ProtocolViolation,
    Tensor,
    check_logits_request,
)
from bbt.server import Backend, MockBackend
from bbt.server.backend import FloatArray, IntArray
from bbt.server.mock import MOCK_TEMPLATE, MOCK_VERBALIZER, sample_mock_dataset

from .helpers import assert_envelope, logits_body

LAYERS = 4


class ShallowOnly(Backend):
    """A backend that does not offer deep prompts (as every server before BBTv2)."""

    def __init__(self, inner: MockBackend) -> None:
        self.inner = inner
        self._info = inner.info.model_copy(update={"capabilities": [], "layer_std": None})

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        return self.inner.tokenize(texts, add_special_tokens)

    def embed(self, token_ids: IntArray) -> FloatArray:
        return self.inner.embed(token_ids)

    def logits(self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray) -> Any:
        assert prompts.ndim == 3, "a deep prompt must never reach a backend without it"
        return self.inner.logits(prompts, texts, candidate_ids)


@pytest.fixture
def deep_mock() -> MockBackend:
    return MockBackend(hidden_size=32, seed=3, num_layers=LAYERS)


def _texts(n: int) -> list[str]:
    return [MOCK_TEMPLATE.format(text=t, mask="[MASK]") for t, _ in sample_mock_dataset(n, 7)]


def _cand(backend: MockBackend) -> np.ndarray[Any, Any]:
    ids, _ = backend.tokenize(list(MOCK_VERBALIZER))
    return np.array([i[0] for i in ids], dtype=np.int64)


def _deep(p: int, info: ModelInfo, n: int = 3, seed: int = 0) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    assert info.layer_std is not None
    scale = np.asarray(info.layer_std, dtype=np.float32)[None, :, None, None]
    shape = (p, info.num_layers, n, info.hidden_size)
    return (rng.standard_normal(shape).astype(np.float32) * scale).astype(np.float32)


def test_discovery_advertises_the_capability_and_one_std_per_layer(
    deep_mock: MockBackend,
) -> None:
    info = deep_mock.info
    assert DEEP_PROMPTS in info.capabilities
    assert info.layer_std is not None
    assert len(info.layer_std) == LAYERS
    assert info.layer_std[0] == pytest.approx(info.embedding_std)
    assert all(s > 0 for s in info.layer_std)


def test_new_discovery_fields_are_marked_since_1_1() -> None:
    for name in ("capabilities", "layer_std"):
        extra = ModelInfo.model_fields[name].json_schema_extra
        assert isinstance(extra, dict), name
        assert extra.get("since") == "1.1", name


def test_layer_zero_alone_is_the_shallow_prompt_bitwise(deep_mock: MockBackend) -> None:
    info = deep_mock.info
    deep = _deep(3, info)
    deep[:, 1:] = 0.0
    texts, cand = _texts(5), _cand(deep_mock)
    shallow, _ = deep_mock.logits(deep[:, 0].copy(), texts, cand)
    layered, _ = deep_mock.logits(deep, texts, cand)
    assert np.array_equal(shallow, layered)


def test_every_layer_slice_changes_the_logits(deep_mock: MockBackend) -> None:
    info = deep_mock.info
    base = _deep(2, info, seed=1)
    texts, cand = _texts(4), _cand(deep_mock)
    ref, _ = deep_mock.logits(base, texts, cand)
    extra = _deep(2, info, seed=2)
    for layer in range(LAYERS):
        moved = base.copy()
        moved[:, layer] += extra[:, layer]
        out, _ = deep_mock.logits(moved, texts, cand)
        assert np.abs(out - ref).max() > 1e-3, f"layer {layer} has no effect"


def test_validation_refuses_a_deep_prompt_without_the_capability(deep_mock: MockBackend) -> None:
    info = ShallowOnly(deep_mock).info
    req = LogitsRequest(
        model=info.id,
        prompts=Tensor.from_numpy(_deep(1, deep_mock.info)),
        texts=_texts(1),
        candidate_ids=[0, 1],
    )
    with pytest.raises(ProtocolViolation, match="deep_prompts") as err:
        check_logits_request(req, info)
    assert err.value.field == "prompts.shape"


def test_validation_needs_one_slice_per_layer(deep_mock: MockBackend) -> None:
    info = deep_mock.info
    wrong = _deep(1, info)[:, :-1]
    req = LogitsRequest(
        model=info.id, prompts=Tensor.from_numpy(wrong), texts=_texts(1), candidate_ids=[0, 1]
    )
    with pytest.raises(ProtocolViolation, match=f"{LAYERS} layers"):
        check_logits_request(req, info)


def test_app_without_the_capability_answers_422(
    deep_mock: MockBackend, make_client: Callable[..., TestClient]
) -> None:
    backend = ShallowOnly(deep_mock)
    http = make_client(backend)
    body = logits_body(backend.info, _deep(1, deep_mock.info))
    env = assert_envelope(http.post("/v1/logits", json=body), 422)
    assert env.error.field == "prompts.shape"
    assert "deep_prompts" in env.error.message


def test_app_with_the_capability_scores_deep_prompts(
    deep_mock: MockBackend, make_client: Callable[..., TestClient]
) -> None:
    http = make_client(deep_mock)
    deep = _deep(2, deep_mock.info)
    body = logits_body(deep_mock.info, deep, b=3)
    resp = http.post("/v1/logits", json=body)
    assert resp.status_code == 200, resp.text
    got = Tensor.model_validate(resp.json()["logits"]).to_numpy()
    want, _ = deep_mock.logits(deep, body["texts"], np.array([0, 1]))
    assert np.array_equal(got, want)


def test_client_refuses_before_sending_to_a_server_without_it(deep_mock: MockBackend) -> None:
    client = LocalClient(ShallowOnly(deep_mock))
    with pytest.raises(InvalidRequestError, match="deep_prompts"):
        client.logits(_deep(1, deep_mock.info), _texts(1), [0, 1])
    assert client.usage.requests == 0


def test_client_splits_deep_prompts_like_shallow_ones(deep_mock: MockBackend) -> None:
    limits = deep_mock.info.limits.model_copy(
        update={"max_prompts_per_request": 2, "max_texts_per_request": 3}
    )
    small = MockBackend(hidden_size=32, seed=3, num_layers=LAYERS, limits=limits)
    deep, texts, cand = _deep(5, small.info), _texts(7), _cand(small)
    client = LocalClient(small)
    split = client.logits(deep, texts, cand.tolist())
    assert client.usage.requests > 1
    assert client.usage.calls == 5
    whole, _ = small.logits(deep, texts, cand)
    np.testing.assert_allclose(split, whole, rtol=0, atol=1e-6)


def test_the_default_mock_has_no_deep_prompts() -> None:
    mock = MockBackend(hidden_size=16, seed=0)
    assert mock.info.capabilities == [FEATURES_CAPABILITY]
    assert mock.info.layer_std is None


def test_a_one_layer_mock_can_take_deep_prompts() -> None:
    mock = MockBackend(hidden_size=16, seed=0, deep_prompts=True)
    assert mock.info.num_layers == 1
    assert DEEP_PROMPTS in mock.info.capabilities
    deep = _deep(2, mock.info)
    texts, cand = _texts(2), _cand(mock)
    a, _ = mock.logits(deep, texts, cand)
    b, _ = mock.logits(deep[:, 0].copy(), texts, cand)
    assert np.array_equal(a, b)


def test_discovery_shows_the_deep_fields_to_1_1_clients_only(
    deep_mock: MockBackend, make_client: Callable[..., TestClient]
) -> None:
    http = make_client(deep_mock)
    new = http.get("/v1/models", headers={PROTOCOL_HEADER: PROTOCOL_VERSION}).json()["data"][0]
    assert DEEP_PROMPTS in new["capabilities"]
    assert len(new["layer_std"]) == LAYERS
    # A v1 client's models are extra="forbid": it must not see fields it does not know.
    old = http.get("/v1/models", headers={PROTOCOL_HEADER: PROTOCOL_V1}).json()["data"][0]
    assert "capabilities" not in old
    assert "layer_std" not in old
