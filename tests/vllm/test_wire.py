"""vLLM's wire formats: torch.save tensors in base64, log-prob answers, error bodies."""

from __future__ import annotations

import base64
import io
import math
import sys

import httpx
import numpy as np
import pytest
import torch
from pydantic import SecretStr

from bbt.errors import (
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ProtocolError,
    RateLimitError,
)
from bbt.vllm import decode_embeds, encode_embeds, fill_candidates, parse_version
from bbt.vllm._wire import status_error, token_logprobs


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_embeds_round_trip_as_vllm_loads_them(dtype: str) -> None:
    arr = np.random.default_rng(0).standard_normal((7, 16)).astype(np.float32)
    data = encode_embeds(arr, dtype)  # type: ignore[arg-type]
    # What vLLM does with it: strict base64, torch.load(weights_only=True), a Tensor.
    tensor = torch.load(io.BytesIO(base64.b64decode(data, validate=True)), weights_only=True)
    assert isinstance(tensor, torch.Tensor)
    assert tensor.dtype == getattr(torch, dtype)
    assert list(tensor.shape) == [7, 16]
    tol = 1e-6 if dtype == "float32" else 1e-2
    np.testing.assert_allclose(decode_embeds(data), arr, rtol=tol, atol=tol)


def test_decode_squeezes_a_batch_of_one_and_refuses_other_shapes() -> None:
    arr = np.ones((1, 3, 4), dtype=np.float32)
    assert decode_embeds(encode_embeds(arr[0])).shape == (3, 4)
    buf = io.BytesIO()
    torch.save(torch.ones(1, 3, 4), buf)
    assert decode_embeds(base64.b64encode(buf.getvalue())).shape == (3, 4)
    buf = io.BytesIO()
    torch.save(torch.ones(2, 3, 4), buf)
    with pytest.raises(ValueError, match="seq_len, hidden_size"):
        decode_embeds(base64.b64encode(buf.getvalue()))


def test_decode_refuses_what_vllm_refuses() -> None:
    buf = io.BytesIO()
    torch.save({"not": "a tensor"}, buf)
    with pytest.raises(ValueError, match=r"did not deserialize to a torch\.Tensor"):
        decode_embeds(base64.b64encode(buf.getvalue()))
    buf = io.BytesIO()
    torch.save(torch.ones(2, 2, dtype=torch.int64), buf)
    with pytest.raises(ValueError, match="dtype"):
        decode_embeds(base64.b64encode(buf.getvalue()))
    with pytest.raises(ValueError, match="base64"):
        decode_embeds("not base64 at all!")


def test_a_pickle_that_runs_code_is_refused_by_weights_only() -> None:
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (print, ("pwned",))

    with pytest.raises(ValueError, match="could not be loaded"):
        decode_embeds(base64.b64encode(pickle.dumps(Evil())))


def test_torch_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(ConfigurationError, match=r"pip install 'bbt\[vllm\]'"):
        encode_embeds(np.zeros((1, 2), dtype=np.float32))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("0.26.0", (0, 26, 0)),
        ("0.26.1rc2", (0, 26, 1)),
        ("0.27.1.dev12+g0abc", (0, 27, 1)),
        ("v1.2", (1, 2, 0)),
        ("unknown", None),
    ],
)
def test_parse_version(text: str, want: tuple[int, int, int] | None) -> None:
    assert parse_version(text) == want


def test_token_logprobs_reads_both_answer_shapes() -> None:
    assert token_logprobs({"token_id:3": -0.5, "token_id:9": -2.0}) == {3: -0.5, 9: -2.0}
    chat = [{"token": "token_id:3", "logprob": -0.5, "bytes": None}]
    assert token_logprobs(chat) == {3: -0.5}
    with pytest.raises(ProtocolError, match="return_tokens_as_token_ids"):
        token_logprobs({" great": -0.1})


def test_missing_candidate_is_ranked_below_everything_returned() -> None:
    # Three tokens returned; candidate 7 is not among them (top-k fallback).
    got = {1: math.log(0.5), 2: math.log(0.2), 3: math.log(0.1)}
    row, missing = fill_candidates(got, [2, 7], margin=1.0)
    assert missing == 1
    assert row[0] == pytest.approx(math.log(0.2))
    # Floor: min(smallest returned log-prob, log of the leftover mass 0.2) = log 0.1, minus 1.
    assert row[1] == pytest.approx(math.log(0.1) - 1.0)
    # When the leftover mass is smaller than the smallest returned, it is the bound.
    got = {1: math.log(0.9), 2: math.log(0.08)}
    row, _ = fill_candidates(got, [5], margin=0.5)
    assert row[0] == pytest.approx(math.log(0.02) - 0.5, rel=1e-5)
    # The filled value never outranks a returned candidate.
    assert row[0] < math.log(0.08)


def test_all_candidates_returned_means_nothing_filled() -> None:
    row, missing = fill_candidates({4: -1.0, 5: -3.0, 6: -0.2}, [5, 4])
    assert missing == 0
    assert row.tolist() == [-3.0, -1.0]


def _response(status: int, body: object, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers or {})


def test_status_error_reads_vllm_error_bodies_and_redacts_the_key() -> None:
    key = SecretStr("sk-secret-123")
    exc = status_error(
        _response(
            400,
            {
                "error": {
                    "message": "bad sk-secret-123",
                    "type": "BadRequestError",
                    "param": "x",
                    "code": 400,
                }
            },
        ),
        key,
    )
    assert isinstance(exc, BadRequestError)
    assert exc.field == "x"
    assert "sk-secret-123" not in str(exc)
    old = status_error(
        _response(400, {"object": "error", "message": "old style", "type": "x", "code": 400}), key
    )
    assert old.message == "old style"
    auth = status_error(_response(401, {"error": "Unauthorized"}), key)
    assert isinstance(auth, AuthenticationError)
    assert auth.message == "Unauthorized"
    busy = status_error(
        _response(
            429, {"error": {"message": "slow", "type": "x", "code": 429}}, {"Retry-After": "3"}
        ),
        key,
    )
    assert isinstance(busy, RateLimitError)
    assert busy.retry_after == 3.0
