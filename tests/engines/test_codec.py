"""bbt.engines.codec: the codec parts every engine adapter shares."""

from __future__ import annotations

from typing import Any

import httpx
import numpy as np
import pytest

from bbt.client.failures import error_for_status
from bbt.engines import ModelFacts
from bbt.engines.codec import (
    check_job,
    check_sequences,
    json_body,
    model_info,
    read_json,
    special_prefix,
)
from bbt.errors import APIStatusError, ConfigurationError, InvalidRequestError, ProtocolError

FACTS = ModelFacts(
    hidden_size=4,
    vocab_size=10,
    num_layers=2,
    embedding_mean=0.0,
    embedding_std=0.5,
    std_source="test",
)


def info(per: int = 2, caps: tuple[str, ...] = ()) -> Any:
    return model_info({"id": "m", "max_model_len": 8}, FACTS, per, 3, caps)


def test_json_body_is_compact() -> None:
    assert json_body({"a": [1, 2], "b": "x"}) == b'{"a":[1,2],"b":"x"}'


def test_model_info_limits_and_capabilities() -> None:
    got = info(per=5, caps=("score",))
    assert (got.limits.max_texts_per_request, got.limits.max_candidates) == (5, 3)
    assert (got.max_sequence_length, got.limits.max_prompt_tokens) == (8, 6)
    assert got.capabilities == ["score"]
    assert info().capabilities == []
    assert model_info({"id": "m"}, FACTS, 1, 1).max_sequence_length == 2048


def _status(response: httpx.Response, secret: Any) -> APIStatusError:
    return error_for_status(response, "engine said no")


def test_read_json_reads_answers_and_raises_errors() -> None:
    request = httpx.Request("GET", "http://h/x")
    assert read_json(httpx.Response(200, json={"a": 1}, request=request), None, _status) == {"a": 1}
    with pytest.raises(APIStatusError, match="engine said no"):
        read_json(httpx.Response(400, json={}, request=request), None, _status)
    with pytest.raises(ProtocolError, match="/x answered with a body that is not JSON"):
        read_json(httpx.Response(200, text="<html>", request=request), None, _status)


@pytest.mark.parametrize(
    ("prompts", "texts", "ids", "match"),
    [
        (np.zeros((1, 4)), ["t"], [1], r"shape \[P, n, H\]"),
        (np.zeros((0, 1, 4)), ["t"], [1], "at least one prompt"),
        (np.zeros((1, 1, 3)), ["t"], [1], "hidden size 3"),
        (np.full((1, 1, 4), np.nan), ["t"], [1], "NaN"),
        (np.zeros((1, 1, 4)), ["t"], [1, 2, 3, 4], "too many: 4"),
        (np.zeros((1, 1, 4)), ["t"], [1, 1], "distinct"),
        (np.zeros((1, 1, 4)), ["t"], [10], "distinct"),
        (np.zeros((1, 1, 4)), ["t", ""], [1], "empty text"),
    ],
)
def test_check_job_refuses(prompts: Any, texts: list[str], ids: list[int], match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        check_job(info(), np.asarray(prompts), texts, ids, lambda n: f"too many: {n}")


def test_check_job_passes_a_good_job() -> None:
    check_job(info(), np.zeros((2, 1, 4)), ["t"], [1, 2], str)


def test_check_sequences() -> None:
    check_sequences(info(), [0], [[1, 2]], 4, 10)  # 1 + 4 + 2 + 1 = 8 tokens: fits
    with pytest.raises(InvalidRequestError, match="text 0 needs 9 tokens"):
        check_sequences(info(), [0], [[1, 2, 3]], 4, 10)
    with pytest.raises(ConfigurationError, match="token id 9, but the embedding table has 5"):
        check_sequences(info(), [0], [[9]], 1, 5)


@pytest.mark.parametrize(
    ("with_special", "want"),
    [([7, 3], [7]), ([3], []), ([7, 8, 3], [7, 8]), ([3, 7], [])],
)
def test_special_prefix(with_special: list[int], want: list[int]) -> None:
    assert special_prefix(lambda t, s: with_special if s else [3]) == want
