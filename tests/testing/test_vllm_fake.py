"""bbt.testing's vLLM fake: vLLM's shapes, its error answers, and a model that is coherent
across the chat and completions paths."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from bbt.testing.vllm_fake import FAKE_BASE_URL, PROMPT_EMBEDS_PLACEHOLDER, VLLMFake
from bbt.vllm import chat_template, encode_embeds


def _client(fake: VLLMFake) -> httpx.Client:
    return httpx.Client(base_url=FAKE_BASE_URL, transport=fake.transport())


def _chat(fake: VLLMFake, **overrides: Any) -> httpx.Response:
    body: dict[str, Any] = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "prompt_embeds", "data": encode_embeds(np.zeros((2, 64), np.float32))},
                    {"type": "text", "text": "great fun It was"},
                ],
            }
        ],
        "max_tokens": 1,
        "temperature": 0,
        "logprobs": True,
        "top_logprobs": 3,
        "return_tokens_as_token_ids": True,
    }
    body.update(overrides)
    return _client(fake).post("/v1/chat/completions", json=body)


def _error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == status
    return err  # type: ignore[no-any-return]


def test_discovery_and_tokenize_shapes(vllm_fake: VLLMFake) -> None:
    c = _client(vllm_fake)
    assert c.get("/version").json() == {"version": "0.26.0"}
    (card,) = c.get("/v1/models").json()["data"]
    assert card["object"] == "model"
    assert card["owned_by"] == "vllm"
    assert card["max_model_len"] == 512
    tok = c.post("/tokenize", json={"prompt": "great fun"}).json()
    assert set(tok) == {"count", "max_model_len", "tokens", "token_strs"}
    assert tok["token_strs"] is None
    assert tok["tokens"][0] == vllm_fake.index["[CLS]"]  # add_special_tokens defaults to true
    assert tok["count"] == len(tok["tokens"])


def test_chat_answer_shape_and_natural_top_k(vllm_fake: VLLMFake) -> None:
    r = _chat(vllm_fake)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    (choice,) = body["choices"]
    (pos,) = choice["logprobs"]["content"]
    assert len(pos["top_logprobs"]) == 3
    values = [e["logprob"] for e in pos["top_logprobs"]]
    assert values == sorted(values, reverse=True)
    assert pos["token"] == pos["top_logprobs"][0]["token"]  # temperature 0: the argmax
    assert body["usage"]["completion_tokens"] == 1


def test_logprob_token_ids_returns_exactly_those_plus_the_sampled(vllm_fake: VLLMFake) -> None:
    ids = [vllm_fake.index["bad"], vllm_fake.index["great"]]
    pos = _chat(vllm_fake, logprob_token_ids=ids).json()["choices"][0]["logprobs"]["content"][0]
    tokens = [e["token"] for e in pos["top_logprobs"]]
    assert set(tokens) - {pos["token"]} == {f"token_id:{i}" for i in ids}


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"logprob_token_ids": list(range(129))}, "at most 128"),
        ({"logprob_token_ids": []}, "must not be an empty list"),
        ({"logprob_token_ids": [1], "logprobs": False}, "`logprobs` must be set to true"),
        ({"top_logprobs": 21}, "greater than max allowed: 20"),
        ({"chat_template": "{{ messages }}"}, "--trust-request-chat-template"),
    ],
)
def test_chat_errors(vllm_fake: VLLMFake, overrides: dict[str, Any], needle: str) -> None:
    assert needle in _error(_chat(vllm_fake, **overrides))["message"]


def test_prompt_embeds_off_and_bad_tensors() -> None:
    off = VLLMFake(enable_prompt_embeds=False)
    err = _error(_chat(off))
    assert err["message"] == "You must set `--enable-prompt-embeds` to input `prompt_embeds`."
    fake = VLLMFake()
    wide = encode_embeds(np.zeros((2, 32), np.float32))
    msgs = [{"role": "user", "content": [{"type": "prompt_embeds", "data": wide}]}]
    assert "hidden size 32" in _error(_chat(fake, messages=msgs))["message"]
    msgs = [{"role": "user", "content": [{"type": "prompt_embeds"}]}]
    assert "non-empty `data`" in _error(_chat(fake, messages=msgs))["message"]
    msgs = [{"role": "user", "content": [{"type": "text", "text": PROMPT_EMBEDS_PLACEHOLDER}]}]
    assert "reserved placeholder" in _error(_chat(fake, messages=msgs))["message"]
    body = {"prompt_embeds": "@@notbase64@@", "logprobs": 1, "max_tokens": 1}
    assert "base64" in _error(_client(fake).post("/v1/completions", json=body))["message"]


def test_completions_checks() -> None:
    fake = VLLMFake()
    c = _client(fake)
    one = encode_embeds(np.zeros((3, 64), np.float32))
    r = c.post("/v1/completions", json={"prompt_embeds": one, "logprob_token_ids": [3]})
    assert "`logprobs` must be set" in _error(r)["message"]
    r = c.post("/v1/completions", json={"max_tokens": 1})
    assert "Either prompt or prompt_embeds" in _error(r)["message"]
    long = encode_embeds(np.zeros((600, 64), np.float32))
    r = c.post("/v1/completions", json={"prompt_embeds": long, "logprobs": 1})
    assert "maximum context length is 512" in _error(r)["message"]
    r = c.post("/v1/completions", json={"prompt_embeds": [one, one], "logprobs": 2, "model": "x"})
    assert _error(r, 404)["param"] == "model"
    r = c.post("/v1/completions", json={"prompt_embeds": [one, one], "logprobs": 2})
    choices = r.json()["choices"]
    assert [ch["index"] for ch in choices] == [0, 1]
    assert all(len(ch["logprobs"]["top_logprobs"][0]) == 2 for ch in choices)


def test_auth_answers_like_vllms_middleware() -> None:
    fake = VLLMFake(api_key="sk-fake")
    c = _client(fake)
    r = c.get("/v1/models")
    assert r.status_code == 401
    assert r.json() == {"error": "Unauthorized"}
    assert c.get("/v1/models", headers={"Authorization": "Bearer sk-fake"}).status_code == 200
    assert c.get("/version").status_code == 200  # vLLM guards /v1 routes only


def test_older_server_ignores_logprob_token_ids() -> None:
    old = VLLMFake(logprob_token_ids=False)
    pos = _chat(old, logprob_token_ids=[17, 18]).json()["choices"][0]["logprobs"]["content"][0]
    assert len(pos["top_logprobs"]) == 3  # natural top-3, as if the field were absent


def test_faults_answer_first_with_retry_after() -> None:
    fake = VLLMFake(faults=[(503, 2.0)])
    r = _client(fake).get("/version")
    assert r.status_code == 503
    assert r.headers["Retry-After"] == "2"
    assert _client(fake).get("/version").status_code == 200


def test_bbt_template_concatenates_parts_verbatim() -> None:
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment()
    tpl = env.from_string(chat_template())
    parts = [{"type": "text", "text": "<P>"}, {"type": "text", "text": "Review: ok\nSentiment:"}]
    assert tpl.render(messages=[{"role": "user", "content": parts}], bos_token="<s>") == (
        "<P>Review: ok\nSentiment:"
    )
    assert tpl.render(messages=[{"role": "user", "content": "plain"}], bos_token="<s>") == "plain"


def test_chat_and_completions_see_the_same_model(vllm_fake: VLLMFake) -> None:
    """[BOS] + prompt + text as chat parts or as one embedded sequence: the same scores; also
    when the sequence travels as float16 (the fake finds the text rows within rounding)."""
    soft = (np.random.default_rng(0).standard_normal((3, 64)) * 0.05).astype(np.float32)
    text = "great fun It was"
    ids = vllm_fake.tokenize_ids(text, False)
    want = vllm_fake.next_logprobs(soft, ids)
    chat = _chat(
        vllm_fake,
        messages=[
            {
                "role": "user",
                "content": [
                    {"type": "prompt_embeds", "data": encode_embeds(soft)},
                    {"type": "text", "text": text},
                ],
            }
        ],
        chat_template_kwargs={"bbt_bos": True},
        logprob_token_ids=[17, 18],
    ).json()
    got = {
        e["token"]: e["logprob"]
        for e in chat["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    }
    assert got["token_id:17"] == pytest.approx(want[17])
    seq = np.concatenate([vllm_fake.table[[vllm_fake.index["[CLS]"]]], soft, vllm_fake.table[ids]])
    for dtype in ("float32", "float16"):
        rows, text_ids = vllm_fake.split_sequence(seq.astype(dtype).astype(np.float32))
        assert text_ids == ids
        assert rows.shape == (1 + len(soft), soft.shape[1])  # BOS is read with the prompt


def _chat_17(fake: VLLMFake, soft: Any, text: str, **kw: Any) -> float:
    content = [
        {"type": "prompt_embeds", "data": encode_embeds(soft)},
        {"type": "text", "text": text},
    ]
    answer = _chat(
        fake, messages=[{"role": "user", "content": content}], logprob_token_ids=[17], **kw
    ).json()
    entries = answer["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
    return float({e["token"]: e["logprob"] for e in entries}["token_id:17"])


def test_chat_with_prompt_embeds_ignores_add_special_tokens_as_vllm_does(
    vllm_fake: VLLMFake,
) -> None:
    """vLLM tokenizes a rendered prompt holding prompt_embeds without special tokens, so
    add_special_tokens=true adds no BOS there; only the template's bos_token does."""
    soft = (np.random.default_rng(1).standard_normal((2, 64)) * 0.05).astype(np.float32)
    ids = vllm_fake.tokenize_ids("great fun", False)
    no_bos = vllm_fake.next_logprobs(soft, ids, bos=False)[17]
    with_bos = vllm_fake.next_logprobs(soft, ids)[17]
    assert no_bos != pytest.approx(with_bos)
    assert _chat_17(vllm_fake, soft, "great fun", add_special_tokens=True) == pytest.approx(no_bos)
    got = _chat_17(vllm_fake, soft, "great fun", chat_template_kwargs={"bbt_bos": True})
    assert got == pytest.approx(with_bos)


def test_sentencepiece_fake_loses_the_word_boundary_after_the_placeholder() -> None:
    fake = VLLMFake(sentencepiece=True)
    plain = fake.tokenize_ids("great bad", False)
    unk = fake.index["[UNK]"]
    assert unk not in plain
    after = fake.tokenize_ids("<prompt_embeds>great bad", False)
    assert after == [fake.placeholder_id, unk, plain[1]]
    assert fake.tokenize_ids("<prompt_embeds> great bad", False)[1:] == plain
    assert fake.tokenize_ids("[CLS]great", False) == [fake.index["[CLS]"], unk]
    assert VLLMFake().tokenize_ids("<prompt_embeds>great bad", False)[1:] == plain


def test_top_logprobs_without_logprobs_and_empty_tensors(vllm_fake: VLLMFake) -> None:
    """As vLLM: top_logprobs > 0 without logprobs is a 400; a 0-row tensor is accepted by
    completions, and refused in chat (its placeholder expands to no token)."""
    bad = _chat(vllm_fake, logprobs=False, top_logprobs=5, logprob_token_ids=None)
    assert bad.status_code == 400
    assert "`logprobs` must be set to true" in _error(bad)["message"]
    empty = np.zeros((0, 64), dtype=np.float32)
    content = [
        {"type": "prompt_embeds", "data": encode_embeds(empty)},
        {"type": "text", "text": "great"},
    ]
    refused = _chat(vllm_fake, messages=[{"role": "user", "content": content}])
    assert "placeholder spans" in _error(refused)["message"]
    body = {
        "prompt_embeds": [encode_embeds(empty)],
        "max_tokens": 1,
        "logprobs": 1,
        "logprob_token_ids": [17],
        "return_tokens_as_token_ids": True,
    }
    answer = _client(vllm_fake).post("/v1/completions", json=body)
    assert answer.status_code == 200
