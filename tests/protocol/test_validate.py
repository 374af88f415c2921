from __future__ import annotations

import numpy as np
import pytest

from bbt.protocol import (
    EmbeddingsRequest,
    ErrorType,
    Limits,
    LogitsRequest,
    ModelInfo,
    ProtocolViolation,
    Tensor,
    TokenizeRequest,
    check_embeddings_request,
    check_logits_request,
    check_tokenize_request,
)

INFO = ModelInfo(
    id="m",
    hidden_size=4,
    vocab_size=10,
    num_layers=1,
    max_sequence_length=64,
    mask_token="[MASK]",
    mask_token_id=3,
    embedding_mean=0.0,
    embedding_std=0.5,
    dtypes=["float32", "float16"],
    limits=Limits(
        max_prompts_per_request=4,
        max_texts_per_request=8,
        max_sequences_per_request=16,
        max_prompt_tokens=5,
        max_candidates=3,
        max_text_chars=40,
        max_embedding_ids=6,
        max_body_bytes=1 << 20,
    ),
)


def _req(
    prompts: np.ndarray, texts: list[str] | None = None, ids: list[int] | None = None, **kw: object
) -> LogitsRequest:
    return LogitsRequest(
        model=kw.pop("model", "m"),  # type: ignore[arg-type]
        prompts=Tensor.from_numpy(prompts),
        texts=texts if texts is not None else ["a [MASK] b"],
        candidate_ids=ids if ids is not None else [1, 2],
        **kw,  # type: ignore[arg-type]
    )


def _violation(req: LogitsRequest) -> ProtocolViolation:
    with pytest.raises(ProtocolViolation) as info:
        check_logits_request(req, INFO)
    return info.value


def test_valid_request_decodes() -> None:
    prompts = np.random.default_rng(0).normal(size=(2, 3, 4)).astype(np.float32)
    out = check_logits_request(_req(prompts, ["x [MASK]", "[MASK] y"]), INFO)
    assert out.prompts.dtype == np.float32
    np.testing.assert_array_equal(out.prompts, prompts)
    assert out.candidate_ids.tolist() == [1, 2]
    assert out.texts == ["x [MASK]", "[MASK] y"]


def test_float16_prompts_are_widened() -> None:
    out = check_logits_request(_req(np.ones((1, 2, 4), dtype=np.float16)), INFO)
    assert out.prompts.dtype == np.float32


def test_zero_length_prompt_is_allowed() -> None:
    out = check_logits_request(_req(np.zeros((2, 0, 4), dtype=np.float32)), INFO)
    assert out.prompts.shape == (2, 0, 4)


def test_unknown_model_is_not_found() -> None:
    v = _violation(_req(np.zeros((1, 1, 4)), model="other"))
    assert v.error_type is ErrorType.not_found
    assert v.field == "model"


@pytest.mark.parametrize(
    ("shape", "fragment"),
    [
        ((1, 4), "rank 2"),
        ((1, 1, 5), "hidden size 4"),
        ((5, 1, 4), "population P=5"),
        ((0, 1, 4), "population P=0"),
        ((1, 6, 4), "prompt length n=6"),
    ],
)
def test_bad_prompt_shapes(shape: tuple[int, ...], fragment: str) -> None:
    v = _violation(_req(np.zeros(shape, dtype=np.float32)))
    assert fragment in v.message
    assert v.field == "prompts.shape"
    assert v.error_type is ErrorType.invalid_request


def test_too_many_texts_and_sequences() -> None:
    assert "9 texts" in _violation(_req(np.zeros((1, 1, 4)), ["[MASK]"] * 9)).message
    assert "P x B = 32" in _violation(_req(np.zeros((4, 1, 4)), ["[MASK]"] * 8)).message


@pytest.mark.parametrize(
    ("ids", "fragment"), [([1, 2, 3, 4], "4 candidate ids"), ([10], "token id 10"), ([-1], "-1")]
)
def test_bad_candidate_ids(ids: list[int], fragment: str) -> None:
    assert fragment in _violation(_req(np.zeros((1, 1, 4)), ids=ids)).message


@pytest.mark.parametrize("text", ["no mask here", "[MASK] twice [MASK]", "[MASK]" + "x" * 40])
def test_bad_texts(text: str) -> None:
    v = _violation(_req(np.zeros((1, 1, 4)), [text]))
    assert v.field == "texts.0"


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_prompts_are_rejected(bad: float) -> None:
    prompts = np.zeros((1, 1, 4), dtype=np.float32)
    prompts[0, 0, 2] = bad
    assert "NaN or infinite" in _violation(_req(prompts)).message


def test_float16_infinity_is_rejected() -> None:
    req = LogitsRequest(
        model="m",
        prompts=Tensor.from_numpy(np.full((1, 1, 4), np.inf, dtype=np.float16)),
        texts=["[MASK]"],
        candidate_ids=[1],
    )
    with pytest.raises(ProtocolViolation, match="NaN or infinite"):
        check_logits_request(req, INFO)


def test_payload_not_matching_shape() -> None:
    req = LogitsRequest(
        model="m",
        prompts=Tensor(dtype="float32", shape=[1, 1, 4], data="AAAA"),
        texts=["[MASK]"],
        candidate_ids=[1],
    )
    assert _violation(req).field == "prompts.data"


def test_tokenize_limits() -> None:
    check_tokenize_request(TokenizeRequest(model="m", texts=["no mask is fine"]), INFO)
    with pytest.raises(ProtocolViolation, match="9 texts"):
        check_tokenize_request(TokenizeRequest(model="m", texts=["a"] * 9), INFO)
    with pytest.raises(ProtocolViolation, match="characters"):
        check_tokenize_request(TokenizeRequest(model="m", texts=["a" * 41]), INFO)


def test_embedding_limits() -> None:
    check_embeddings_request(EmbeddingsRequest(model="m", token_ids=[0, 9]), INFO)
    with pytest.raises(ProtocolViolation, match="7 token ids"):
        check_embeddings_request(EmbeddingsRequest(model="m", token_ids=[0] * 7), INFO)
    with pytest.raises(ProtocolViolation, match="outside the vocabulary") as exc:
        check_embeddings_request(EmbeddingsRequest(model="m", token_ids=[0, 10]), INFO)
    assert exc.value.field == "token_ids.1"


def test_wire_models_reject_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        TokenizeRequest.model_validate({"model": "m", "texts": ["a"], "surprise": 1})


def test_already_decoded_prompts_skip_the_base64_round_trip() -> None:
    prompts = np.ones((1, 2, 4), dtype=np.float32)
    req = _req(prompts)
    object.__setattr__(req.prompts, "data", "")  # decoding this would fail
    out = check_logits_request(req, INFO, prompts=prompts)
    np.testing.assert_array_equal(out.prompts, prompts)
    bad = prompts.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ProtocolViolation, match="NaN"):
        check_logits_request(req, INFO, prompts=bad)
    with pytest.raises(ValueError, match="do not match"):
        check_logits_request(req, INFO, prompts=prompts[:, :1])


def test_prompt_values_beyond_the_limit_are_rejected() -> None:
    limit = INFO.limits.max_prompt_value
    ok = np.full((1, 1, 4), limit, dtype=np.float32)
    check_logits_request(_req(ok), INFO)
    v = _violation(_req(-2 * ok))
    assert "absolute value" in v.message
    assert v.field == "prompts.data"


@pytest.mark.parametrize("text", ["\ud800 [MASK]", "a [MASK] \udfff b"])
def test_lone_surrogates_are_refused_as_invalid_requests(text: str) -> None:
    # The real tokenizer raises TypeError on these (found by benchmarks/fuzz_openapi.py as a
    # 500); the shared check turns them into a 422 on the client and the server alike.
    v = _violation(_req(np.zeros((1, 2, 4), np.float32), texts=["ok [MASK]", text]))
    assert v.field == "texts.1"
    assert "surrogate" in v.message
    with pytest.raises(ProtocolViolation) as info:
        check_tokenize_request(TokenizeRequest(model="m", texts=[text]), INFO)
    assert info.value.field == "texts.0"


def test_non_ascii_text_that_is_valid_unicode_passes() -> None:
    check_logits_request(_req(np.zeros((1, 2, 4), np.float32), texts=["café ✓ [MASK]"]), INFO)


def test_a_missing_capability_is_one_404_on_model_naming_what_it_needs() -> None:
    from bbt.protocol.features import no_features
    from bbt.protocol.score import no_score

    features, score = no_features("m"), no_score("m")
    assert features.message == (
        "model 'm' does not serve features (no 'features' capability; it needs protocol 1.3 "
        "and a backend that offers them)"
    )
    assert score.message == (
        "model 'm' returns no prompt log-probabilities (no 'score' capability; it needs "
        "protocol 1.6 and a causal LM backend that offers it)"
    )
    for exc in (features, score):
        assert (exc.field, exc.error_type) == ("model", ErrorType.not_found)
