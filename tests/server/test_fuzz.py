"""Adversarial requests never crash the app: always a 2xx answer that follows the protocol,
or a 4xx error envelope; never a 5xx, never a hang.

The vLLM engine once crashed on malformed prompt embeddings (CVE-2025-62164); these tests
throw random JSON, wrong shapes, non-finite tensors, huge declared dimensions with tiny
payloads, bad base64, out-of-range ids, texts without masks and enormous texts at it.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bbt.protocol import (
    EmbeddingsResponse,
    ErrorEnvelope,
    LogitsResponse,
    ModelList,
    TokenizeResponse,
)
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app
from bbt.testing import CoreTransport

BACKEND = MockBackend(hidden_size=16)
INFO = BACKEND.info
SETTINGS = ServerSettings(api_keys=[], max_body_bytes=256 * 1024)
CLIENT = TestClient(create_app(BACKEND, SETTINGS))
# The in-process transport of bbt.testing runs the same core without FastAPI: fuzz it too.
CORE_CLIENT = httpx.Client(transport=CoreTransport(BACKEND, SETTINGS), base_url="http://core")
OK_MODELS: dict[str, type[BaseModel]] = {
    "/v1/logits": LogitsResponse,
    "/v1/embeddings": EmbeddingsResponse,
    "/v1/tokenize": TokenizeResponse,
    "/v1/models": ModelList,
}
ROUTES = ["/v1/logits", "/v1/embeddings", "/v1/tokenize", "/v1/models", "/healthz", "/v2/x"]

FUZZ = settings(
    max_examples=120,
    deadline=None,  # shared CI cores: time is not what these tests check
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _check_one(route: str, response: Any) -> None:
    assert response.status_code < 500, response.text
    assert response.headers["x-bbt-protocol"] == "1"
    if response.status_code >= 400:
        ErrorEnvelope.model_validate_json(response.content)
    elif route in OK_MODELS:
        OK_MODELS[route].model_validate_json(response.content)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5)
    ),
    max_leaves=20,
)

texts = st.one_of(
    st.just(f"good {INFO.mask_token} ."),
    st.just("no mask at all"),
    st.just(f"{INFO.mask_token}{INFO.mask_token}"),
    st.text(max_size=30).map(lambda t: t + INFO.mask_token),
    st.text(max_size=30),
    st.integers(min_value=1, max_value=3).map(lambda k: "a " * (k * INFO.limits.max_text_chars)),
)


def _payload(values: list[float], dtype: str) -> str:
    np_dtype = "<f2" if dtype == "float16" else "<f4"
    with np.errstate(over="ignore"):  # 1e30 becomes inf in float16: that is the point
        packed = np.asarray(values, dtype=np.float64).astype(np_dtype).tobytes()
    return base64.b64encode(packed).decode()


def _post(route: str, body: Any) -> Any:
    # httpx refuses NaN/inf in JSON; servers meet them anyway, so encode them ourselves.
    return _post_raw(route, json.dumps(body, allow_nan=True).encode())


def _post_raw(route: str, content: bytes) -> tuple[Any, Any]:
    headers = {"content-type": "application/json"}
    return (
        CLIENT.post(route, content=content, headers=headers),
        CORE_CLIENT.post(route, content=content, headers=headers),
    )


def _check(route: str, responses: tuple[Any, Any]) -> None:
    app, core = responses
    _check_one(route, app)
    _check_one(route, core)
    # Same core, same verdict: a client cannot tell the transports apart.
    assert app.status_code == core.status_code, (app.text, core.text)


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    dtype = draw(st.sampled_from(["float32", "float16", "float64", "int8", ""]))
    shape = draw(
        st.one_of(
            st.lists(st.integers(min_value=0, max_value=4), min_size=3, max_size=3).map(
                lambda s: [s[0], s[1], INFO.hidden_size]
            ),
            st.lists(st.integers(min_value=-(2**63), max_value=2**64), max_size=6),
            st.just([2**40, 2**40, INFO.hidden_size]),
            st.just([1, 1, INFO.hidden_size]),
        )
    )
    size = math.prod(shape) if shape and all(0 <= d < 1000 for d in shape) else 3
    special = st.sampled_from([math.nan, math.inf, -math.inf, 1e30, 0.0, -0.0])
    values = draw(
        st.lists(st.floats(width=16) | special, min_size=size, max_size=size)
        if size <= 256
        else st.just([0.0] * 3)
    )
    data = draw(
        st.one_of(
            st.just(_payload(values, dtype)),
            st.text(max_size=40),
            st.just("!!!!" * 4),
            st.just("A" * 4 * math.ceil(size * 4 / 3)),
        )
    )
    return {"dtype": dtype, "shape": shape, "data": data}


ids = st.lists(
    st.one_of(
        st.integers(min_value=-5, max_value=INFO.vocab_size + 5),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.text(max_size=3),
        st.floats(),
    ),
    max_size=6,
)
models = st.sampled_from([INFO.id, INFO.id + "x", "", "🙂"])


@st.composite
def logits_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": draw(models),
        "prompts": draw(tensors()),
        "texts": draw(st.lists(texts, max_size=4)),
        "candidate_ids": draw(ids),
    }
    if draw(st.booleans()):
        body["output_dtype"] = draw(st.sampled_from(["float32", "float16", "bfloat16", 3]))
    if draw(st.booleans()):
        del body[draw(st.sampled_from(sorted(body)))]
    return body


@FUZZ
@given(route=st.sampled_from(ROUTES), value=json_values)
def test_random_json_never_5xx(route: str, value: Any) -> None:
    _check(route, _post(route, value))


@FUZZ
@given(route=st.sampled_from(ROUTES), raw=st.binary(max_size=200))
def test_random_bytes_never_5xx(route: str, raw: bytes) -> None:
    _check(route, _post_raw(route, raw))


@FUZZ
@given(body=logits_bodies())
def test_adversarial_logits_requests_never_5xx(body: dict[str, Any]) -> None:
    _check("/v1/logits", _post("/v1/logits", body))


@FUZZ
@given(
    model=models,
    token_ids=ids,
    dtype=st.sampled_from(["float32", "float16", "float64"]),
    texts=st.lists(texts, max_size=3),
    special=st.sampled_from([True, False, "yes", None]),
)
def test_adversarial_embeddings_and_tokenize_never_5xx(
    model: str, token_ids: list[Any], dtype: str, texts: list[str], special: Any
) -> None:
    body = {"model": model, "token_ids": token_ids, "dtype": dtype}
    _check("/v1/embeddings", _post("/v1/embeddings", body))
    tok = {"model": model, "texts": texts, "add_special_tokens": special}
    _check("/v1/tokenize", _post("/v1/tokenize", tok))


def test_valid_request_passes_the_fuzz_oracle() -> None:
    # The oracle must accept a good request, or the tests above prove nothing.
    prompt = np.zeros((2, 3, INFO.hidden_size), np.float32)
    body = {
        "model": INFO.id,
        "prompts": {
            "dtype": "float32",
            "shape": [2, 3, INFO.hidden_size],
            "data": base64.b64encode(prompt.tobytes()).decode(),
        },
        "texts": [f"good {INFO.mask_token} ."],
        "candidate_ids": [1, 2],
    }
    responses = _post("/v1/logits", body)
    assert [r.status_code for r in responses] == [200, 200]
    _check("/v1/logits", responses)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 100_000 + b"]" * 100_000,  # deep nesting
        b'{"model": "' + b"x" * 200_000 + b'"}',  # long string, under the body limit
        json.dumps({"texts": ["a"] * 20_000, "model": INFO.id}).encode(),
        b'{"model": NaN, "texts": [Infinity]}',
        '{"model": "\ud800"}'.encode("utf-8", "surrogatepass"),
    ],
)
def test_pathological_bodies_never_5xx(raw: bytes) -> None:
    for route in ("/v1/logits", "/v1/tokenize"):
        _check(route, _post_raw(route, raw))
