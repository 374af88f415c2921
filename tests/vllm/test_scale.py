"""bbt.vllm._scale: the engine's embedding scale (Gemma: sqrt(H) in the model's dtype)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bbt.errors import ConfigurationError
from bbt.testing.vllm_fake import FAKE_BASE_URL, VLLMFake
from bbt.vllm import VLLMService
from bbt.vllm._model import model_facts
from bbt.vllm._scale import apply_scale, embedding_scale


def test_gemma_scales_by_sqrt_hidden_in_its_dtype() -> None:
    assert embedding_scale({"model_type": "llama"}, 576) == 1.0
    assert embedding_scale(None, 640) == 1.0
    assert embedding_scale({"model_type": "gemma3_text"}, 640) == pytest.approx(
        math.sqrt(640), rel=1e-7
    )
    # bfloat16 keeps 8 significant bits: sqrt(640) = 25.298 is held as 25.25.
    bf16 = embedding_scale({"model_type": "gemma3_text", "torch_dtype": "bfloat16"}, 640)
    assert bf16 == 25.25
    nested = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text"}}
    assert embedding_scale(nested, 2560) == pytest.approx(math.sqrt(2560), rel=1e-7)


def test_apply_scale_scales_the_table_and_its_statistics() -> None:
    table = np.random.default_rng(0).standard_normal((10, 4)).astype(np.float32)
    facts = model_facts(
        config=None, table=table, hidden_size=None, embedding_std=None, vocab_size=None
    )
    scaled, t2 = apply_scale(facts, table, {"model_type": "gemma"})
    assert t2 is not None
    np.testing.assert_allclose(t2, table * 2.0)
    assert scaled.embedding_std == pytest.approx(facts.embedding_std * 2.0)
    assert scaled.embedding_scale == 2.0
    assert apply_scale(facts, table, {"model_type": "llama"}) == (facts, table)
    with pytest.raises(ConfigurationError, match="positive"):
        apply_scale(facts, table, None, 0.0)


def test_the_adapter_sends_scaled_rows_and_reports_the_scaled_std() -> None:
    fake = VLLMFake()
    svc = VLLMService(
        FAKE_BASE_URL,
        transport=fake.transport(),
        env_file=None,
        config={"model_type": "gemma", "hidden_size": 64, "vocab_size": len(fake.vocab)},
        embedding_table=fake.table / 8.0,  # the raw table of a model that scales by 8
    )
    assert svc.model_info().embedding_std == pytest.approx(float(fake.table.std()), rel=1e-5)
    np.testing.assert_allclose(svc.embed([5, 6]), fake.table[[5, 6]], rtol=1e-6)
    ids = [fake.index["bad"], fake.index["great"]]
    prompts = np.zeros((1, 2, 64), dtype=np.float32) + 0.01
    got = svc.logits(prompts, ["great bad"], ids)
    want = fake.next_logprobs(prompts[0], fake.tokenize_ids("great bad", False))[ids]
    np.testing.assert_allclose(got[0, 0], want, atol=1e-5)
