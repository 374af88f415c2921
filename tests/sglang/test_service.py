"""SGLangService over the fake: the scores are the fake model's, requests are batched per
prompt, usage is counted, misconfigured servers and bad input are one clear error."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from bbt.errors import ConfigurationError, InvalidRequestError
from bbt.sglang import SGLangService
from bbt.testing.sglang_fake import FAKE_BASE_URL, SGLangFake
from tests.sglang.conftest import ServiceFactory

TEXTS = ["a great film", "terrible", "it was fine"]


def _prompts(p: int = 2, n: int = 3, h: int = 64, seed: int = 0) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(seed).standard_normal((p, n, h)) * 0.05).astype(np.float32)


def test_logits_are_the_models_next_token_logprobs(
    make_service: ServiceFactory, fake: SGLangFake
) -> None:
    svc = make_service()
    ids = [fake.index["great"], fake.index["terrible"]]
    prompts = _prompts()
    out = svc.logits(prompts, TEXTS, ids)
    assert out.shape == (2, 3, 2)
    for i in range(2):
        for j, text in enumerate(TEXTS):
            want = fake.next_logprobs(prompts[i], fake.tokenize_ids(text, False), bos=True)
            np.testing.assert_allclose(out[i, j], want[ids], atol=1e-5)


def test_one_generate_request_per_prompt_and_text_group(
    make_service: ServiceFactory, fake: SGLangFake
) -> None:
    svc = make_service(sequences_per_request=2)
    svc.logits(_prompts(p=3), TEXTS, [5, 6])
    bodies = [r["body"] for r in fake.requests_seen if r["path"] == "/generate"]
    assert sorted(len(b["input_embeds"]) for b in bodies) == [1, 1, 1, 2, 2, 2]
    body = bodies[0]
    assert body["sampling_params"] == {"max_new_tokens": 1, "temperature": 0.0}
    assert body["return_logprob"] is True
    assert body["token_ids_logprob"] == [5, 6]
    # BOS + 3 soft rows + the text's rows, H numbers each.
    seq = body["input_embeds"][0]
    assert len(seq) == 1 + 3 + len(fake.tokenize_ids(TEXTS[0], False))
    assert {len(r) for r in seq} == {64}
    usage = svc.usage
    assert usage.calls == 3
    assert usage.sequences == 9
    assert usage.requests == fake.counters.requests  # every request the fake answered
    assert usage.tokens == sum(len(s) for b in bodies for s in b["input_embeds"])


def test_float16_numbers_are_shorter_and_score_within_rounding(
    make_service: ServiceFactory,
) -> None:
    a, b = make_service(), make_service(dtype="float16")
    prompts = _prompts()
    out32 = a.logits(prompts, TEXTS, [5, 6])
    out16 = b.logits(prompts, TEXTS, [5, 6])
    np.testing.assert_allclose(out16, out32, atol=5e-2)
    plan32 = sum(r.body_bytes for r in a.plan_logits_requests(prompts, TEXTS, [5, 6]))
    plan16 = sum(r.body_bytes for r in b.plan_logits_requests(prompts, TEXTS, [5, 6]))
    assert plan16 < 0.75 * plan32


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("scale", [0.0, 1e-6, 0.05, 3e4])
def test_the_plan_bounds_what_logits_sends(
    make_service: ServiceFactory, dtype: str, scale: float
) -> None:
    """Same requests; planned bytes never below those sent, whatever the prompt values
    (0: the shortest numbers; the plan is exact where every number is at its widest)."""
    svc = make_service(sequences_per_request=2, dtype=dtype)
    prompts = _prompts() * np.float32(scale)
    plan = svc.plan_logits_requests(np.zeros_like(prompts), TEXTS, [5, 6])
    before = svc.usage.copy()
    svc.logits(prompts, TEXTS, [5, 6])
    spent = svc.usage - before
    assert spent.requests == len(plan)
    assert spent.bytes_sent <= sum(r.body_bytes for r in plan)


def test_the_plan_is_exact_for_the_widest_numbers(make_service: ServiceFactory) -> None:
    svc = make_service()
    prompts = np.full((1, 2, 64), -1.08570915e-13, dtype=np.float32)  # 15 characters each
    plan = svc.plan_logits_requests(prompts, TEXTS, [5])
    before = svc.usage.copy()
    svc.logits(prompts, TEXTS, [5])
    assert (svc.usage - before).bytes_sent == sum(r.body_bytes for r in plan)


def test_numbers_read_back_as_the_float32_rows(make_service: ServiceFactory) -> None:
    from bbt.sglang import rows_json

    rows = np.random.default_rng(1).standard_normal((3, 5)).astype(np.float32)
    back = np.asarray(json.loads(json.dumps(rows_json(rows, "float32"))), dtype=np.float32)
    assert np.array_equal(back, rows)


def test_a_server_without_disable_radix_cache_is_a_settings_error(
    make_service: ServiceFactory,
) -> None:
    svc = make_service(SGLangFake(disable_radix_cache=False))
    with pytest.raises(ConfigurationError, match="--disable-radix-cache"):
        svc.logits(_prompts(), TEXTS, [5])


def test_the_table_is_required() -> None:
    with pytest.raises(ConfigurationError, match="input-embedding table"):
        SGLangService(FAKE_BASE_URL, env_file=None, hidden_size=64, embedding_std=0.1)


@pytest.mark.parametrize(
    ("prompts", "texts", "ids", "match"),
    [
        (np.zeros((2, 3, 32), np.float32), TEXTS, [5], "hidden size"),
        (np.full((1, 2, 64), np.nan, np.float32), TEXTS, [5], "NaN"),
        (np.zeros((1, 2, 64), np.float32), ["ok", ""], [5], "empty text"),
        (np.zeros((1, 2, 64), np.float32), TEXTS, [5, 5], "distinct"),
    ],
)
def test_bad_calls_are_refused_before_any_generate(
    make_service: ServiceFactory,
    fake: SGLangFake,
    prompts: Any,
    texts: list[str],
    ids: list[int],
    match: str,
) -> None:
    svc = make_service()
    with pytest.raises(InvalidRequestError, match=match):
        svc.logits(prompts, texts, ids)
    assert not [r for r in fake.requests_seen if r["path"] == "/generate"]


def test_version_and_key(fake: SGLangFake, model_files: Any) -> None:
    keyed = SGLangFake(api_key="sk-sgl-canary")
    cfg, emb = model_files
    svc = SGLangService(
        FAKE_BASE_URL,
        api_key="sk-sgl-canary",
        transport=keyed.transport(),
        env_file=None,
        config=cfg,
        embedding_table=emb,
    )
    assert svc.model_info().id == keyed.model_id
    assert svc.server_version == "0.5.23"
    assert "sk-sgl-canary" not in repr(svc)


def test_gemma_configs_scale_the_table_rows(model_files: Any, fake: SGLangFake) -> None:
    cfg = {**fake.config(), "model_type": "gemma3_text", "torch_dtype": "float32"}
    svc = SGLangService(
        FAKE_BASE_URL,
        transport=fake.transport(),
        env_file=None,
        config=cfg,
        embedding_table=model_files[1],
    )
    np.testing.assert_allclose(svc.embed([3]), fake.table[[3]] * np.float32(8.0), rtol=1e-6)
    assert svc.model_info().embedding_std == pytest.approx(float(fake.table.std()) * 8.0, rel=1e-5)
