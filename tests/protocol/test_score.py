"""The score operation's wire models and checks (protocol 1.6)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from bbt.protocol import (
    PROTOCOL_VERSION,
    SCORE_CAPABILITY,
    SUPPORTED_VERSIONS,
    ErrorType,
    ModelInfo,
    ProtocolViolation,
    ScoreRequest,
    negotiate,
    wire_json,
)
from bbt.protocol.score import SCORE_SINCE, check_score_answer, check_score_request, no_score
from bbt.server import MockBackend

INFO: ModelInfo = MockBackend(causal=True).info


def test_1_6_is_spoken_and_negotiated() -> None:
    assert SCORE_SINCE == "1.6" == PROTOCOL_VERSION
    assert "1.4" in SUPPORTED_VERSIONS
    assert "1.6" in SUPPORTED_VERSIONS
    assert negotiate("1.6") == "1.6"
    assert "1.5" in SUPPORTED_VERSIONS
    assert negotiate("1.5") == "1.5"
    assert negotiate("1.7") == "1.6"


def test_the_score_capability_is_hidden_from_clients_older_than_1_6() -> None:
    info = INFO.model_copy(update={"capabilities": ["features", SCORE_CAPABILITY]})
    for version, want in (("1.2", []), ("1.3", ["features"]), ("1.6", None)):
        seen = json.loads(wire_json(info, version))["capabilities"]
        assert seen == (want if want is not None else ["features", SCORE_CAPABILITY])


def test_a_request_is_checked_against_the_model() -> None:
    assert check_score_request(ScoreRequest(model=INFO.id, texts=["a b"]), INFO) == ["a b"]
    with pytest.raises(ProtocolViolation) as err:
        check_score_request(ScoreRequest(model="other", texts=["a"]), INFO)
    assert err.value.field == "model"
    too_long = "x" * (INFO.limits.max_text_chars + 1)
    with pytest.raises(ProtocolViolation) as err:
        check_score_request(ScoreRequest(model=INFO.id, texts=["a", too_long]), INFO)
    assert err.value.field == "texts.1"
    with pytest.raises(ValidationError):
        ScoreRequest(model=INFO.id, texts=[])
    with pytest.raises(ValidationError):
        ScoreRequest.model_validate({"model": INFO.id, "texts": ["a"], "prompts": None})


def test_an_answer_must_be_one_possible_sum_per_text() -> None:
    assert check_score_answer([-1.5, 0.0], [2, 0], 2) == ([-1.5, 0.0], [2, 0])
    for sums, counts in (
        ([-1.0], [1, 1]),  # one sum short
        ([0.5], [1]),  # a probability above one
        ([float("nan")], [1]),
        ([-1.0], [-1]),
        ([-1.0], [0]),  # a cost over no token
    ):
        with pytest.raises(ValueError, match="score answered"):
            check_score_answer(sums, counts, len(counts))


def test_no_score_is_a_not_found_naming_the_capability() -> None:
    err = no_score("m")
    assert err.error_type == ErrorType.not_found
    assert "'score'" in str(err)
    assert "1.6" in str(err)
