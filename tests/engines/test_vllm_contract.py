"""bbt's vLLM adapter against vLLM's own request path (tests/engines/_vllm_engine.py).

Every body bbt sends is validated by vLLM's request models and SamplingParams.verify,
tensors are decoded by vLLM's loader, and chat messages are rendered by vLLM's renderer
with bbt's template on a SentencePiece-style and a byte-level tokenizer: BOS and the text's
ids must equal /tokenize(text), and both modes must feed the model the same rows."""

from __future__ import annotations

import json
import math
import os
from typing import Any

import httpx
import numpy as np
import pytest
import vllm

from bbt.testing.vllm_fake import VLLMFake
from bbt.vllm import VLLMService, encode_embeds
from tests.engines._tokenizers import TOKENIZERS
from tests.engines._vllm_engine import MODEL, VLLMEngine

TEXTS = ["It was great", "Review: good fun\nSentiment:", "the plot was thin"]
H = 64


def test_the_pinned_version_is_the_one_imported() -> None:
    want = os.environ.get("BBT_VLLM_VERSION")
    if want:
        assert vllm.__version__ == want


@pytest.fixture(scope="module", params=sorted(TOKENIZERS))
def tokenizer(request: pytest.FixtureRequest) -> Any:
    return TOKENIZERS[request.param]()


def _service(engine: VLLMEngine, table: bool, **kw: Any) -> VLLMService:
    extra: dict[str, Any] = {"embedding_table": engine.raw_table} if table else {}
    extra.setdefault("embedding_std", 0.02)
    return VLLMService(
        "http://vllm.test",
        transport=engine.transport(),
        env_file=None,
        hidden_size=H,
        vocab_size=engine.raw_table.shape[0],
        mode="completions" if table else "chat",
        **{**extra, **kw},
    )


def _prompts(p: int = 2, n: int = 3) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(7).standard_normal((p, n, H)) * 0.02).astype(np.float32)


def _ids(engine: VLLMEngine) -> list[int]:
    return [int(i) for i in engine.tok.encode(" great bad", add_special_tokens=False)[:2]]


def test_chat_layout_is_bos_prompt_then_tokenize_of_the_text(tokenizer: Any) -> None:
    """vLLM's renderer, bbt's template and request: [BOS?] + placeholder rows + the ids of
    /tokenize(text), for each tokenizer family (fails without bbt's BOS and lead fixes)."""
    engine = VLLMEngine(tokenizer, hidden_size=H)
    svc = _service(engine, table=False, max_concurrency=1)  # requests in (prompt, text) order
    prompts = _prompts()
    svc.logits(prompts, TEXTS, _ids(engine))
    chats = [s for s in engine.scored if s.path == "chat"]
    assert len(chats) == len(prompts) * len(TEXTS)
    for k, seq in enumerate(chats):
        i, j = divmod(k, len(TEXTS))
        text = TEXTS[j]
        with_special = engine.tok.encode(text, add_special_tokens=True)
        plain = engine.tok.encode(text, add_special_tokens=False)
        prefix = with_special[: len(with_special) - len(plain)]
        assert seq.token_ids is not None
        assert seq.is_token is not None
        soft = [p for p, t in enumerate(seq.is_token) if not t]
        assert soft == list(range(len(prefix), len(prefix) + prompts.shape[1]))
        assert seq.token_ids[: len(prefix)] == prefix, "BOS as /tokenize puts it"
        assert seq.token_ids[soft[-1] + 1 :] == plain, "the text's ids as /tokenize(text)"
        np.testing.assert_array_equal(seq.rows[soft], prompts[i])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_both_modes_feed_the_model_the_same_rows(tokenizer: Any, dtype: str) -> None:
    engine = VLLMEngine(tokenizer, hidden_size=H, dtype=dtype)
    prompts, ids = _prompts(), _ids(engine)
    one = {"dtype": dtype, "max_concurrency": 1}  # requests in (prompt, text) order
    chat = _service(engine, table=False, **one).logits(prompts, TEXTS, ids)
    table = _service(engine, table=True, **one).logits(prompts, TEXTS, ids)
    np.testing.assert_allclose(chat, table, atol=1e-6)
    by_mode = {m: [s.rows for s in engine.scored if s.path == m] for m in ("chat", "completions")}
    for a, b in zip(by_mode["chat"], by_mode["completions"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_gemma_scale_makes_the_modes_agree(tokenizer: Any) -> None:
    """The engine multiplies token rows by sqrt(H) (Gemma); bbt scales the table it sends."""
    scale = math.sqrt(H)
    engine = VLLMEngine(tokenizer, hidden_size=H, embedding_scale=scale)
    prompts, ids = _prompts(1), _ids(engine)
    gemma = {"model_type": "gemma3_text", "hidden_size": H, "vocab_size": engine.raw_table.shape[0]}
    chat = _service(engine, table=False, config=gemma).logits(prompts, TEXTS, ids)
    table = _service(engine, table=True, config=gemma).logits(prompts, TEXTS, ids)
    np.testing.assert_allclose(chat, table, atol=1e-6)
    unscaled = _service(engine, table=True, config=gemma, embedding_scale=1.0)
    assert np.abs(unscaled.logits(prompts, TEXTS, ids) - chat).max() > 1e-3


def test_every_body_bbt_sent_is_one_vllm_accepts(tokenizer: Any) -> None:
    engine = VLLMEngine(tokenizer, hidden_size=H)
    for table in (False, True):
        _service(engine, table=table, dtype="float16").logits(_prompts(), TEXTS, _ids(engine))
    paths = {p for p, _ in engine.bodies}
    assert paths == {"/tokenize", "/v1/chat/completions", "/v1/completions"}
    # handle() answered every body: nothing was rejected (a rejection raises in logits).
    assert len(engine.scored) == 2 * len(TEXTS) * 2


# ----------------------------------------------------------------- fake vs vLLM


def _chat_body(rows: int = 2, **over: Any) -> dict[str, Any]:
    content = [
        {"type": "prompt_embeds", "data": encode_embeds(np.zeros((rows, H), np.float32))},
        {"type": "text", "text": "great bad"},
    ]
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "add_generation_prompt": False,
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 5,
        "logprob_token_ids": [5, 6],
        "return_tokens_as_token_ids": True,
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def _completion_body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt_embeds": [encode_embeds(np.zeros((3, H), np.float32))],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": 5,
        "logprob_token_ids": [5, 6],
        "return_tokens_as_token_ids": True,
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


def _not_a_tensor() -> str:
    import base64
    import io

    import torch

    buf = io.BytesIO()
    torch.save({"a": 1}, buf)
    return base64.b64encode(buf.getvalue()).decode()


CASES: list[tuple[str, str, dict[str, Any]]] = [
    ("chat: bbt's body", "chat", {}),
    ("chat: logprob_token_ids without logprobs", "chat", {"logprobs": False}),
    ("chat: top_logprobs without logprobs", "chat", {"logprobs": False, "logprob_token_ids": None}),
    ("chat: 129 logprob_token_ids", "chat", {"logprob_token_ids": list(range(129))}),
    ("chat: 128 logprob_token_ids", "chat", {"logprob_token_ids": list(range(128))}),
    ("chat: top_logprobs above max", "chat", {"top_logprobs": 21, "logprob_token_ids": None}),
    ("chat: template kwarg 'tokenize'", "chat", {"chat_template_kwargs": {"tokenize": False}}),
    ("chat: a 0-row tensor", "chat", {"rows": 0}),
    ("completions: bbt's body", "completions", {}),
    ("completions: ids without logprobs", "completions", {"logprobs": None}),
    ("completions: 129 ids", "completions", {"logprob_token_ids": list(range(129))}),
    ("completions: hidden size 32", "completions", {"hidden": 32}),
    ("completions: not base64", "completions", {"prompt_embeds": ["@@@"]}),
    ("completions: not a tensor", "completions", {"prompt_embeds": "not-a-tensor"}),
    ("completions: 3-D batch of 1", "completions", {"batch": True}),
    ("completions: a 0-row tensor", "completions", {"prompt_embeds": "empty"}),
]


def _body(kind: str, over: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    over = dict(over)
    if kind == "chat":
        return "/v1/chat/completions", _chat_body(rows=over.pop("rows", 2), **over)
    if over.pop("hidden", None):
        over["prompt_embeds"] = [encode_embeds(np.zeros((3, 32), np.float32))]
    if over.pop("batch", None):
        over["prompt_embeds"] = [encode_embeds(np.zeros((1, 3, H), np.float32))]
    if over.get("prompt_embeds") == "not-a-tensor":
        over["prompt_embeds"] = [_not_a_tensor()]
    if over.get("prompt_embeds") == "empty":
        over["prompt_embeds"] = [encode_embeds(np.zeros((0, H), np.float32))]
    return "/v1/completions", _completion_body(**over)


@pytest.mark.parametrize(("name", "kind", "over"), CASES, ids=[c[0] for c in CASES])
def test_the_fake_accepts_and_rejects_what_vllm_does(
    tokenizer: Any, name: str, kind: str, over: dict[str, Any]
) -> None:
    path, body = _body(kind, over)
    engine = VLLMEngine(tokenizer, hidden_size=H)
    request = httpx.Request("POST", f"http://vllm.test{path}", json=body)
    status = engine.transport().handle_request(request).status_code
    fake = VLLMFake(hidden_size=H, model_id=MODEL)
    fake_status, _, answer = fake.handle("POST", path, {}, json.dumps(body).encode())
    assert (status == 200) == (fake_status == 200), (name, status, fake_status, answer)


def test_score_requests_pass_vllms_checks_and_sum_its_prompt_logprobs(tokenizer: Any) -> None:
    """bbt's score bodies are parsed by vLLM's CompletionRequest into SamplingParams with
    ``prompt_logprobs`` set; each sequence is /tokenize(text) with special tokens (BOS where
    the tokenizer adds one), and the score is the sum of its prompt log-probs after the first."""
    engine = VLLMEngine(tokenizer, hidden_size=H)
    svc = _service(engine, table=False, max_concurrency=1)
    got = svc.score(TEXTS)
    scored = [s for s in engine.scored if s.path == "score"]
    assert [s.token_ids for s in scored] == [
        engine.tok.encode(t, add_special_tokens=True) for t in TEXTS
    ]
    want = []
    for s in scored:
        ids = s.token_ids
        assert ids is not None
        lps = [engine._logprobs(engine._token_rows(ids[:t]))[ids[t]] for t in range(1, len(ids))]
        want.append(math.fsum(lps))
    np.testing.assert_allclose(got.logprobs, want, rtol=1e-9)
    assert got.token_counts.tolist() == [len(s.token_ids or []) - 1 for s in scored]
