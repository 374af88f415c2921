"""Prompt log-probabilities (protocol 1.6 ``score``) over vLLM's ``prompt_logprobs``,
against bbt.testing's vLLM fake (bbt/vllm/_score.py)."""

from __future__ import annotations

import math
from typing import Any

import httpx
import numpy as np
import pytest

from bbt.client.service import offers_score
from bbt.comparison.base import CompareContext
from bbt.comparison.perplexity import ManualPerplexity
from bbt.errors import ProtocolError
from bbt.protocol import SCORE_CAPABILITY
from bbt.testing.vllm_fake import FAKE_BASE_URL, VLLMFake
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task
from tests.vllm.conftest import ServiceFactory

TEXTS = ["good great it was", "bad", "the a was bad and very good", "it was great !"]


def _by_hand(fake: VLLMFake, text: str, bos: bool = True) -> tuple[float, int]:
    """The fake model's log-probability of ``text``, token by token from its numpy LM: the
    log-softmax over the whole vocabulary of the mock's logits for the words before."""
    words = text.split()
    ids = ([fake.index["[CLS]"]] if bos else []) + [fake.index[w] for w in words]
    every = np.arange(len(fake.vocab))
    soft = np.zeros((1, 0, fake.hidden_size), np.float32)
    total = 0.0
    for t in range(1, len(ids)):
        before = [fake.vocab[i] for i in ids[:t] if fake.vocab[i] != "[CLS]"]
        logits, _ = fake.backend.logits(soft, [" ".join(before) or "."], every)
        row = logits[0, 0].astype(np.float64)
        m = row.max()
        total += float(row[ids[t]] - m - math.log(np.exp(row - m).sum()))
    return total, len(ids) - 1


def test_offers_score_and_lists_the_capability(make_service: ServiceFactory) -> None:
    svc = make_service()
    assert SCORE_CAPABILITY in svc.model_info().capabilities
    assert offers_score(svc)


@pytest.mark.parametrize("table", [False, True])
def test_score_is_the_fake_models_logprobs_by_hand(
    make_service: ServiceFactory, vllm_fake: VLLMFake, table: bool
) -> None:
    svc = make_service(table=table)
    got = svc.score(TEXTS)
    want = [_by_hand(vllm_fake, t) for t in TEXTS]
    # With a BOS every text token is scored.
    assert got.token_counts.tolist() == [len(t.split()) for t in TEXTS]
    assert got.token_counts.tolist() == [c for _, c in want]
    np.testing.assert_allclose(got.logprobs, [s for s, _ in want], rtol=1e-6, atol=1e-6)
    assert (got.logprobs < 0).all()
    ppl = got.perplexity()
    np.testing.assert_allclose(ppl, np.exp(-got.logprobs / got.token_counts))
    assert svc.usage.calls == 1


def test_the_request_is_token_ids_with_prompt_logprobs(
    make_service: ServiceFactory, vllm_fake: VLLMFake
) -> None:
    svc = make_service(sequences_per_request=3)
    svc.score(TEXTS)
    sent = [r for r in vllm_fake.requests_seen if r["path"] == "/v1/completions"]
    assert len(sent) == 2  # 4 texts, 3 per request
    bos = vllm_fake.index["[CLS]"]
    prompts = [p for r in sent for p in r["body"]["prompt"]]
    assert prompts == [[bos, *vllm_fake.tokenize_ids(t, False)] for t in TEXTS]
    for r in sent:
        assert r["body"]["prompt_logprobs"] == 0
        assert r["body"]["max_tokens"] == 1


def test_a_text_scores_the_same_alone_or_in_a_batch(make_service: ServiceFactory) -> None:
    batched = make_service(sequences_per_request=64).score(TEXTS)
    alone = make_service(sequences_per_request=1, max_concurrency=1).score(TEXTS)
    np.testing.assert_array_equal(batched.logprobs, alone.logprobs)
    np.testing.assert_array_equal(batched.token_counts, alone.token_counts)


def test_a_long_text_keeps_its_end_and_room_for_one_token(make_service: ServiceFactory) -> None:
    fake = VLLMFake(max_model_len=8)
    words = ["good", "bad", "great", "terrible", "the", "a", "and", "but", "not", "very", "so"]
    got = make_service(fake=fake).score([" ".join(words)])
    # BOS + 6 text tokens + the one generated token fill the window of 8.
    assert got.token_counts.tolist() == [6]
    np.testing.assert_allclose(got.logprobs, [_by_hand(fake, " ".join(words[-6:]))[0]], rtol=1e-6)


def test_a_server_ignoring_prompt_logprobs_is_a_clear_error(
    make_service: ServiceFactory, vllm_fake: VLLMFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vllm_fake, "prompt_logprobs", lambda ids, k: None)
    with pytest.raises(ProtocolError, match="prompt_logprobs"):
        make_service().score(TEXTS)


def test_minus_inf_is_read_as_vllms_clamp() -> None:
    from bbt.vllm._score import read_score

    answer: dict[str, Any] = {
        "choices": [{"index": 0, "prompt_logprobs": [None, {"5": {"logprob": -9999.0}}]}],
        "usage": {"prompt_tokens": 2},
    }
    assert read_score(answer, [[1, 5]]) == ([-9999.0], [1], 2)
    with pytest.raises(ProtocolError, match="prompt token 6"):
        read_score(answer, [[1, 6]])


@pytest.mark.parametrize(
    ("value", "message"), [(-2, "non-negative or -1"), (21, "greater than max allowed")]
)
def test_the_fake_checks_prompt_logprobs_as_vllm(value: int, message: str) -> None:
    fake = VLLMFake()
    client = httpx.Client(transport=fake.transport(), base_url=FAKE_BASE_URL)
    body = {"model": fake.model_id, "prompt": [[1, 2, 3]], "max_tokens": 1}
    r = client.post("/v1/completions", json={**body, "prompt_logprobs": value})
    assert r.status_code == 400
    assert message in r.json()["error"]["message"]
    ok = client.post("/v1/completions", json={**body, "prompt_logprobs": 2}).json()
    entries = ok["choices"][0]["prompt_logprobs"]
    assert entries[0] is None
    assert len(entries) == 3
    assert "2" in entries[1]
    assert "3" in entries[2]
    assert all(len(e) in (2, 3) for e in entries[1:])  # the token and the top 2
    assert ok["choices"][0]["logprobs"] is None


def test_a_text_prompt_without_prompt_logprobs_gets_none(vllm_fake: VLLMFake) -> None:
    client = httpx.Client(transport=vllm_fake.transport(), base_url=FAKE_BASE_URL)
    body = {"model": vllm_fake.model_id, "prompt": "good fun", "max_tokens": 1}
    ans = client.post("/v1/completions", json=body).json()
    assert ans["choices"][0]["prompt_logprobs"] is None


def test_manual_ppl_chooses_by_perplexity_over_vllm(make_service: ServiceFactory) -> None:
    """``bbt compare``'s manual-ppl scores its templates through the adapter (no fallback)."""
    svc = make_service()
    task = Task(
        name="fake-sentiment",
        template="{sentence} it was {mask} .",
        labels=("negative", "positive"),
        words=("bad", "great"),
        causal_template="{sentence} it was",
        causal_words=(" bad", " great"),
    )
    words = ["good", "great", "bad", "terrible", "very good", "not bad"]
    rows = [Example({"sentence": f"the a {words[i % 6]}"}, int(i % 6 < 2)) for i in range(16)]
    fitted = ManualPerplexity().fit(CompareContext(svc, task, rows[:8], rows[8:], 0, budget=20))
    assert fitted.notes["selected_by"] == "perplexity"
    ppl = fitted.notes["perplexity"]
    assert len(ppl) >= 2
    assert all(math.isfinite(v) and v > 1.0 for v in ppl.values())
    assert fitted.notes["template"] == min(ppl, key=lambda t: ppl[t])
