"""The mock's causal mode: a decoder with no mask token on which tuning converges."""

from __future__ import annotations

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.protocol import LogitsRequest, ProtocolViolation, Tensor, check_logits_request
from bbt.server.mock import (
    MOCK_CAUSAL_MODEL_ID,
    MOCK_CAUSAL_TEMPLATE,
    MOCK_TEMPLATE,
    MockBackend,
    sample_mock_dataset,
)
from bbt.tuner import Example, TuneConfig, Tuner, get_preset, sample_k_shot, verbalizer_ids


def test_causal_info_has_no_mask_token() -> None:
    info = MockBackend(causal=True).info
    assert (info.kind, info.id) == ("causal_lm", MOCK_CAUSAL_MODEL_ID)
    assert (info.mask_token, info.mask_token_id) == (None, None)
    masked = MockBackend().info
    assert masked.kind == "masked_lm"
    assert masked.mask_token == "[MASK]"
    # Same model otherwise: one table, one vocabulary.
    assert (info.hidden_size, info.vocab_size, info.embedding_std) == (
        masked.hidden_size,
        masked.vocab_size,
        masked.embedding_std,
    )


def test_causal_texts_need_no_mask_and_cost_no_special_tokens() -> None:
    b = MockBackend(hidden_size=16, causal=True)
    texts = [MOCK_CAUSAL_TEMPLATE.format(text=t) for t, _ in sample_mock_dataset(4, 0)]
    prompts = np.zeros((2, 3, 16), np.float32)
    req = LogitsRequest(
        model=b.info.id,
        prompts=Tensor.from_numpy(prompts),
        texts=texts,
        candidate_ids=[1, 2],
    )
    decoded = check_logits_request(req, b.info)  # no mask needed
    out, usage = b.logits(decoded.prompts, decoded.texts, decoded.candidate_ids)
    assert out.shape == (2, 4, 2)
    words = sum(len(ids) for ids in b.tokenize(texts)[0])
    assert usage.tokens == 2 * (words + 4 * 3)  # prompt + text, no [CLS]/[SEP]
    masked = MockBackend(hidden_size=16)
    _, masked_usage = masked.logits(
        prompts, [MOCK_TEMPLATE.format(text="a", mask="[MASK]")], np.array([1])
    )
    assert masked_usage.tokens == 2 * (5 + 2 + 3)  # "a it was [MASK] ."


def test_a_text_of_no_tokens_is_a_violation() -> None:
    b = MockBackend(hidden_size=16, causal=True)
    with pytest.raises(ProtocolViolation, match="text 1 has no tokens"):
        b.logits(np.zeros((1, 2, 16), np.float32), ["it was", "   "], np.array([1]))


def test_tuning_the_causal_mock_converges() -> None:
    svc = LocalClient(MockBackend(hidden_size=32, causal=True))
    task = get_preset("mock")
    examples = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    train, dev = sample_k_shot(examples, 16, 1, 2)
    tuner = Tuner(svc, task, train, dev, TuneConfig(budget=600, seed=1))
    assert tuner.train_texts[0].endswith(" It was")  # the decoder template, no mask
    assert tuner.candidate_ids == verbalizer_ids(task, svc)
    initial = tuner.evaluate_dev(np.zeros(tuner.config.dim))[0]
    best = tuner.run()
    assert initial < 0.75
    assert best.dev_metric is not None
    assert best.dev_metric >= 0.9
