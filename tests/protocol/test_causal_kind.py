"""ModelInfo.kind "causal_lm" (protocol 1.1): no mask token, texts scored at the next token."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from bbt.protocol import LogitsRequest, ModelInfo, ProtocolViolation, Tensor, check_logits_request

from .test_validate import INFO

CAUSAL = INFO.model_copy(update={"kind": "causal_lm", "mask_token": None, "mask_token_id": None})


def _req(texts: list[str]) -> LogitsRequest:
    return LogitsRequest(
        model="m",
        prompts=Tensor.from_numpy(np.zeros((1, 2, 4), dtype=np.float32)),
        texts=texts,
        candidate_ids=[1, 2],
    )


def test_a_causal_model_has_no_mask_token_and_says_so_on_the_wire() -> None:
    wire = json.loads(ModelInfo.model_validate(CAUSAL.model_dump()).model_dump_json())
    assert (wire["kind"], wire["mask_token"], wire["mask_token_id"]) == ("causal_lm", None, None)
    assert ModelInfo.model_validate(wire) == CAUSAL


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"kind": "causal_lm"}, "no mask token"),  # keeps INFO's [MASK]
        ({"kind": "causal_lm", "mask_token": None}, "no mask token"),  # keeps the id
        ({"mask_token": None}, "needs mask_token"),  # masked without a mask
        ({"mask_token_id": None}, "needs mask_token"),
        ({"mask_token": ""}, "must not be empty"),
        ({"kind": "seq2seq"}, "masked_lm"),
    ],
)
def test_mask_fields_must_match_the_kind(update: dict[str, object], message: str) -> None:
    data = {**INFO.model_dump(), **update}
    with pytest.raises(ValidationError, match=message):
        ModelInfo.model_validate(data)


def test_a_v1_masked_model_info_is_unchanged_on_the_wire() -> None:
    # v1 clients require mask_token and mask_token_id: a masked server still sends both.
    wire = json.loads(INFO.model_dump_json())
    assert (wire["kind"], wire["mask_token"], wire["mask_token_id"]) == ("masked_lm", "[MASK]", 3)


def test_causal_texts_need_no_mask_and_any_text_is_taken_verbatim() -> None:
    texts = ["Review: good\nSentiment:", "a [MASK] b", "[MASK] [MASK]"]
    out = check_logits_request(_req(texts), CAUSAL)
    assert out.texts == texts
    # The same texts break the masked rule (one mask each), so the kinds really differ.
    with pytest.raises(ProtocolViolation, match="exactly once"):
        check_logits_request(_req(["Review: good\nSentiment:"]), INFO)


def test_an_empty_causal_text_is_refused_naming_it() -> None:
    with pytest.raises(ProtocolViolation, match="text 1 is empty") as exc:
        check_logits_request(_req(["fine", ""]), CAUSAL)
    assert exc.value.field == "texts.1"


def test_causal_texts_keep_the_other_text_checks() -> None:
    with pytest.raises(ProtocolViolation, match="limit is 40"):
        check_logits_request(_req(["x" * 41]), CAUSAL)
