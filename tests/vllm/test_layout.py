"""bbt.vllm._layout: BOS and the text's lead in black-box requests, probed from /tokenize."""

from __future__ import annotations

import numpy as np
import pytest

from bbt.testing.vllm_fake import FAKE_BASE_URL, VLLMFake
from bbt.vllm import VLLMService
from bbt.vllm._layout import PROMPT_EMBEDS_PLACEHOLDER, chat_layout, special_prefix, text_lead

TEXTS = ["great bad it was", "bad it was", "good so it was"]


def _tokenizer(table: dict[str, list[int]]):  # type: ignore[no-untyped-def]
    def tokenize(text: str, special: bool) -> list[int]:
        return ([1] if special else []) + table[text]

    return tokenize


def test_lead_is_the_first_that_reproduces_tokenize() -> None:
    ph = PROMPT_EMBEDS_PLACEHOLDER
    sp = {"It was": [5, 6], ph + "It was": [9, 7, 6], ph + " It was": [9, 5, 6], "a": [3]}
    assert text_lead(_tokenizer(sp)) == (" ", True)
    byte_level = {"It was": [5, 6], ph + "It was": [9, 5, 6], ph + " It was": [9, 8, 6]}
    assert text_lead(_tokenizer(byte_level)) == ("", True)


def test_no_lead_that_works_warns_and_sends_the_text_as_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ph = PROMPT_EMBEDS_PLACEHOLDER
    odd = {"It was": [5, 6], ph + "It was": [9, 7, 6], ph + " It was": [9, 8, 6], "a": [3]}
    assert text_lead(_tokenizer(odd)) == ("", False)
    assert "differently from /tokenize" in caplog.text
    assert chat_layout(_tokenizer(odd)).bos is True
    assert special_prefix(_tokenizer(odd)) == [1]


def _svc(fake: VLLMFake, table: bool) -> VLLMService:
    kw: dict[str, object] = {"embedding_table": fake.table} if table else {}
    return VLLMService(
        FAKE_BASE_URL,
        transport=fake.transport(),
        env_file=None,
        hidden_size=64,
        vocab_size=len(fake.vocab),
        embedding_std=float(fake.table.std()),
        mode="completions" if table else "chat",
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("sentencepiece", [False, True])
def test_both_modes_score_the_same_sequence(sentencepiece: bool) -> None:
    """BOS + prompt + text in both modes, also on a tokenizer that drops the word boundary
    after a special token (where bbt leads the text with a space)."""
    fake = VLLMFake(sentencepiece=sentencepiece)
    prompts = (np.random.default_rng(3).standard_normal((2, 3, 64)) * 0.05).astype(np.float32)
    ids = [fake.index["bad"], fake.index["great"]]
    chat = _svc(fake, table=False)
    assert chat.chat_layout().lead == (" " if sentencepiece else "")
    assert chat.chat_layout().bos is True
    a = chat.logits(prompts, TEXTS, ids)
    b = _svc(fake, table=True).logits(prompts, TEXTS, ids)
    np.testing.assert_allclose(a, b, atol=1e-5)
    want = fake.next_logprobs(prompts[0], fake.tokenize_ids(TEXTS[0], False))[ids]
    np.testing.assert_allclose(a[0, 0], want, atol=1e-5)


def test_without_the_fixes_the_fake_tells_the_modes_apart() -> None:
    """The fake now catches what it could not: no BOS in chat, or no lead on a
    SentencePiece-style tokenizer, scores a different sequence from embedding-table mode."""
    from bbt.vllm._layout import ChatLayout

    fake = VLLMFake(sentencepiece=True)
    prompts = (np.random.default_rng(3).standard_normal((1, 3, 64)) * 0.05).astype(np.float32)
    ids = [fake.index["bad"], fake.index["great"]]
    b = _svc(fake, table=True).logits(prompts, TEXTS, ids)
    for broken in (ChatLayout(bos=False, lead=" "), ChatLayout(bos=True, lead="")):
        chat = _svc(fake, table=False)
        chat._layout = broken
        a = chat.logits(prompts, TEXTS, ids)
        assert np.abs(a - b).max() > 1e-3
