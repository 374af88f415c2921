"""VLLMService against bbt.testing's vLLM fake: both modes, the fallback, errors, retries."""

from __future__ import annotations

import logging
import threading
import time

import httpx
import numpy as np
import pytest

from bbt.client import Service
from bbt.errors import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequestError,
)
from bbt.testing.vllm_fake import FAKE_BASE_URL, VLLMFake
from bbt.tuner.losses import get_loss
from bbt.vllm import VLLMService, parse_vllm_url
from tests.vllm.conftest import ServiceFactory

TEXTS = ["good great fun It was", "bad awful It was", "the a It was"]


def _prompts(p: int = 2, n: int = 4, h: int = 64) -> np.ndarray:
    return (np.random.default_rng(1).standard_normal((p, n, h)) * 0.05).astype(np.float32)


def _ids(fake: VLLMFake) -> list[int]:
    return [fake.index["bad"], fake.index["great"]]


def _expected(fake: VLLMFake, prompts: np.ndarray, texts: list[str], ids: list[int]) -> np.ndarray:
    out = np.empty((len(prompts), len(texts), len(ids)))
    for i, p in enumerate(prompts):
        for j, t in enumerate(texts):
            out[i, j] = fake.next_logprobs(p, fake.tokenize_ids(t, False))[ids]
    return out


def test_is_a_service_and_describes_a_causal_lm(make_service: ServiceFactory) -> None:
    svc = make_service()
    assert isinstance(svc, Service)
    info = svc.model_info()
    assert info.kind == "causal_lm"
    assert info.mask_token is None
    assert (info.hidden_size, info.vocab_size, info.max_sequence_length) == (64, 1023, 512)
    assert svc.server_version == "0.26.0"


@pytest.mark.parametrize("table", [False, True])
def test_scores_are_the_models_next_token_logprobs(
    make_service: ServiceFactory, vllm_fake: VLLMFake, table: bool
) -> None:
    svc = make_service(table=table)
    assert svc.mode == ("completions" if table else "chat")
    prompts, ids = _prompts(), _ids(vllm_fake)
    got = svc.logits(prompts, TEXTS, ids)
    np.testing.assert_allclose(got, _expected(vllm_fake, prompts, TEXTS, ids), rtol=1e-5, atol=1e-5)
    assert svc.fallback_positions == 0


def test_black_box_request_shape(make_service: ServiceFactory, vllm_fake: VLLMFake) -> None:
    svc = make_service()
    svc.logits(_prompts(2), TEXTS, _ids(vllm_fake))
    chats = [r["body"] for r in vllm_fake.requests_seen if r["path"] == "/v1/chat/completions"]
    assert len(chats) == 2 * len(TEXTS)  # one request per (prompt, text)
    body = chats[0]
    (message,) = body["messages"]
    assert [p["type"] for p in message["content"]] == ["prompt_embeds", "text"]
    assert message["content"][1]["text"] in TEXTS
    assert body["max_tokens"] == 1
    assert body["temperature"] == 0
    assert body["logprobs"] is True
    assert body["logprob_token_ids"] == _ids(vllm_fake)
    # vLLM ignores add_special_tokens with prompt_embeds parts: the template writes BOS.
    assert body["add_special_tokens"] is False
    assert body["chat_template_kwargs"] == {"bbt_bos": True}
    assert "chat_template" not in body  # the server's --chat-template decides
    assert svc.usage.calls == 2
    assert svc.usage.sequences == 2 * len(TEXTS)


def test_embedding_table_mode_sends_fewer_requests(
    make_service: ServiceFactory, vllm_fake: VLLMFake
) -> None:
    svc = make_service(table=True, sequences_per_request=2)
    svc.logits(_prompts(3), TEXTS, _ids(vllm_fake))
    comps = [r["body"] for r in vllm_fake.requests_seen if r["path"] == "/v1/completions"]
    # 3 prompts x ceil(3 texts / 2 per request), against 9 chat requests in black-box mode
    assert sorted(len(b["prompt_embeds"]) for b in comps) == [1, 1, 1, 2, 2, 2]
    assert svc.usage.sequences == 9
    # Texts are tokenised once: the next call sends completions only.
    n = svc.usage.requests
    svc.logits(_prompts(1), TEXTS, _ids(vllm_fake))
    assert svc.usage.requests == n + 2


def test_bos_goes_before_the_soft_prompt(make_service: ServiceFactory, vllm_fake: VLLMFake) -> None:
    from bbt.vllm import decode_embeds

    svc = make_service(table=True)
    prompts = _prompts(1, n=3)
    svc.logits(prompts, TEXTS[:1], _ids(vllm_fake))
    body = next(r["body"] for r in vllm_fake.requests_seen if r["path"] == "/v1/completions")
    rows = decode_embeds(body["prompt_embeds"][0])
    bos = vllm_fake.index["[CLS]"]
    np.testing.assert_array_equal(rows[0], vllm_fake.table[bos])
    np.testing.assert_array_equal(rows[1:4], prompts[0])
    text_ids = vllm_fake.tokenize_ids(TEXTS[0], False)
    np.testing.assert_array_equal(rows[4:], vllm_fake.table[text_ids])


def test_float16_on_the_wire_halves_the_bytes(
    make_service: ServiceFactory, vllm_fake: VLLMFake
) -> None:
    wide, half = make_service(), make_service(dtype="float16")
    prompts, ids = _prompts(1, n=20), _ids(vllm_fake)
    a = wide.logits(prompts, TEXTS, ids)
    b = half.logits(prompts, TEXTS, ids)
    np.testing.assert_allclose(a, b, atol=2e-2)
    assert half.usage.bytes_sent < 0.7 * wide.usage.bytes_sent


def test_a_per_row_shift_changes_no_loss_and_no_prediction() -> None:
    # Log-probs are logits minus the log-partition of each (prompt, text) row.
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 6, 3)).astype(np.float32)
    shift = rng.standard_normal((4, 6, 1)).astype(np.float32) * 10
    labels = np.array([0, 1, 2, 1, 0, 2])
    for name in ("ce", "hinge", "neg_accuracy", "neg_f1"):
        loss = get_loss(name)
        np.testing.assert_allclose(
            loss(logits + shift, labels), loss(logits, labels), rtol=1e-4, atol=1e-5
        )
    assert ((logits + shift).argmax(-1) == logits.argmax(-1)).all()


def test_older_server_falls_back_to_top_k(make_service: ServiceFactory) -> None:
    old = VLLMFake(logprob_token_ids=False)
    svc = make_service(old, top_logprobs=5)
    prompts, ids = _prompts(1), _ids(old)
    got = svc.logits(prompts, TEXTS, ids)
    want = _expected(old, prompts, TEXTS, ids)
    chats = [r["body"] for r in old.requests_seen if r["path"] == "/v1/chat/completions"]
    assert all(b["top_logprobs"] == 5 for b in chats)
    for j, text in enumerate(TEXTS):
        lp = old.next_logprobs(prompts[0], old.tokenize_ids(text, False))
        top = np.sort(lp)[::-1][:5]
        for c, cid in enumerate(ids):
            if lp[cid] >= top[-1]:  # returned: exact
                assert got[0, j, c] == pytest.approx(want[0, j, c], abs=1e-5)
            else:  # not returned: below every returned log-prob, by the margin at least
                assert got[0, j, c] <= top[-1] - 1.0 + 1e-5
    assert svc.fallback_positions > 0


def test_too_many_candidates_fail_before_any_request(
    make_service: ServiceFactory, vllm_fake: VLLMFake
) -> None:
    svc = make_service()
    svc.model_info()
    n = svc.usage.requests
    with pytest.raises(InvalidRequestError, match="at most 128"):
        svc.logits(_prompts(1), TEXTS, list(range(129)))
    with pytest.raises(InvalidRequestError, match="hidden size 32"):
        svc.logits(_prompts(1, h=32), TEXTS, _ids(vllm_fake))
    assert svc.usage.requests == n


def test_prompt_embeds_not_enabled_is_one_clear_error(make_service: ServiceFactory) -> None:
    fake = VLLMFake(enable_prompt_embeds=False)
    for table in (False, True):
        svc = make_service(fake, table=table)
        with pytest.raises(ConfigurationError, match="start it with --enable-prompt-embeds"):
            svc.logits(_prompts(1), TEXTS, _ids(fake))


def test_no_chat_template_says_which_to_use(make_service: ServiceFactory) -> None:
    fake = VLLMFake(chat_template=None)
    svc = make_service(fake)
    with pytest.raises(ConfigurationError, match=r"--chat-template .*bbt_base\.jinja"):
        svc.logits(_prompts(1), TEXTS, _ids(fake))


def test_a_hidden_size_the_server_rejects_is_a_settings_error(make_service: ServiceFactory) -> None:
    fake = VLLMFake()
    svc = make_service(fake, config={"hidden_size": 32, "vocab_size": 1023}, embedding_std=0.05)
    with pytest.raises(ConfigurationError, match=r"hidden size 32 .* is not the served model's"):
        svc.logits(_prompts(1, h=32), TEXTS, _ids(fake))


@pytest.mark.parametrize("version", ["0.25.9", "0.9.2"])
def test_old_vllm_is_refused(make_service: ServiceFactory, version: str) -> None:
    svc = make_service(VLLMFake(version=version))
    with pytest.raises(ConfigurationError, match=f"vLLM {version}, older than 0.26.0"):
        svc.model_info()


def test_a_server_without_version_is_not_refused(make_service: ServiceFactory) -> None:
    svc = make_service(VLLMFake(version=None))
    assert svc.model_info().kind == "causal_lm"
    assert svc.server_version is None


def test_retries_honour_retry_after_and_are_counted(make_service: ServiceFactory) -> None:
    fake = VLLMFake(faults=[(503, 2.0), (429, 1.5), (500, None)])
    svc = make_service(fake, max_retries=3)
    info = svc.model_info()  # /version: 503, 429, 500, then 200
    assert info.kind == "causal_lm"
    assert svc.usage.retries == 3
    assert svc.slept[:2] == [2.0, 1.5]  # type: ignore[attr-defined]


def test_the_key_is_sent_and_never_shown(
    make_service: ServiceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    key = "sk-vllm-canary-42"
    fake = VLLMFake(api_key=key)
    svc = make_service(fake, api_key=key)
    assert svc.model_info().id == fake.model_id
    assert key not in repr(svc)
    wrong = make_service(fake, api_key="sk-wrong-key-7")
    with pytest.raises(AuthenticationError) as info:
        wrong.model_info()
    assert "sk-wrong-key-7" not in str(info.value)
    # A retried failure is logged without the key.
    flaky = make_service(VLLMFake(api_key=key, faults=[(503, None)]), api_key=key)
    with caplog.at_level(logging.DEBUG):
        flaky.model_info()
    assert caplog.records
    assert key not in caplog.text


def test_concurrency_is_bounded(vllm_fake: VLLMFake, make_service: ServiceFactory) -> None:
    inner = vllm_fake.transport()
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        time.sleep(0.005)
        try:
            return inner.handle_request(request)
        finally:
            with lock:
                state["now"] -= 1

    svc = VLLMService(
        FAKE_BASE_URL,
        hidden_size=64,
        embedding_std=0.05,
        vocab_size=1023,
        max_concurrency=3,
        transport=httpx.MockTransport(handler),
        env_file=None,
    )
    svc.logits(_prompts(3), TEXTS, _ids(vllm_fake))
    assert 1 < state["peak"] <= 3


def test_embed_needs_the_table(make_service: ServiceFactory, vllm_fake: VLLMFake) -> None:
    with pytest.raises(ConfigurationError, match="--init zeros needs nothing"):
        make_service().embed([1, 2])
    np.testing.assert_array_equal(make_service(table=True).embed([3, 4]), vllm_fake.table[[3, 4]])


def test_tokenize_uses_vllms_tokenize(make_service: ServiceFactory, vllm_fake: VLLMFake) -> None:
    resp = make_service().tokenize(["great fun", "bad"], add_special_tokens=True)
    assert resp.ids == [
        vllm_fake.tokenize_ids("great fun", True),
        vllm_fake.tokenize_ids("bad", True),
    ]
    assert resp.tokens[1] == ["[CLS]", "bad"]


def test_url_form() -> None:
    root, options = parse_vllm_url(
        "vllm+http://gpu:8000/?config=/m/config.json&embeddings=/m/e.npy&concurrency=4&embedding_std=0.02"
    )
    assert root == "http://gpu:8000/"
    assert options == {
        "config": "/m/config.json",
        "embedding_table": "/m/e.npy",
        "max_concurrency": 4,
        "embedding_std": 0.02,
    }
    with pytest.raises(ConfigurationError, match="unknown option 'colour'"):
        parse_vllm_url("vllm+http://gpu:8000?colour=red")
    with pytest.raises(ConfigurationError, match="holds credentials"):
        parse_vllm_url("vllm+http://user:sk-1@gpu:8000")


def test_without_torch_the_adapter_says_which_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'bbt\[vllm\]'"):
        VLLMService(FAKE_BASE_URL, hidden_size=64, embedding_std=0.05, vocab_size=10, env_file=None)


def test_limits_describe_one_vllm_request(make_service: ServiceFactory) -> None:
    chat = make_service().model_info().limits
    assert (chat.max_prompts_per_request, chat.max_sequences_per_request) == (1, 1)
    table = make_service(table=True, sequences_per_request=16).model_info().limits
    assert (table.max_prompts_per_request, table.max_texts_per_request) == (1, 16)
    assert chat.max_candidates == 128


def test_a_table_too_small_for_the_tokenizer_is_a_clear_error(
    make_service: ServiceFactory, vllm_fake: VLLMFake
) -> None:
    svc = make_service(table=True, embedding_table=vllm_fake.table[:20], config=None)
    with pytest.raises(ConfigurationError, match="not the served model's input-embedding table"):
        svc.logits(_prompts(1), ["pepe vate It was"], [3, 4])


def test_a_failing_job_stops_the_requests_not_yet_sent(make_service: ServiceFactory) -> None:
    fake = VLLMFake(enable_prompt_embeds=False)
    svc = make_service(fake, max_concurrency=2)
    with pytest.raises(ConfigurationError):
        svc.logits(_prompts(4), TEXTS, _ids(fake))
    sent = [r for r in fake.requests_seen if r["path"] == "/v1/chat/completions"]
    assert len(sent) <= 4  # of 12: the two in flight, and at most one more each
