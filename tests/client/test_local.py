"""LocalClient: the Service interface over an in-process backend, with the HTTP client's rules."""

from __future__ import annotations

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import InvalidRequestError, ProtocolError, ServerError
from bbt.protocol import ProtocolViolation, Usage
from bbt.server.backend import FloatArray, IntArray

from .fakes import INFO, FakeBackend, expected_logits, tagged_prompts, texts
from .service_conformance import assert_is_service


def test_is_a_service() -> None:
    assert_is_service(LocalClient(FakeBackend()), texts(3))


def test_logits_are_split_like_the_http_client() -> None:
    backend = FakeBackend()
    client = LocalClient(backend)
    out = client.logits(tagged_prompts(7), texts(9), [5, 6])
    np.testing.assert_array_equal(out, expected_logits(7, 9, 2))
    sizes = [n for name, n in backend.calls if name == "logits"]
    assert len(sizes) == 12
    assert max(sizes) <= INFO.limits.max_sequences_per_request
    assert sum(sizes) == 63


def test_usage_counts_backend_calls_and_no_bytes() -> None:
    client = LocalClient(FakeBackend())
    client.logits(tagged_prompts(7, n_tokens=2), texts(9), [5, 6])
    client.tokenize(texts(5))
    client.embed(list(range(7)))
    assert client.usage.as_dict() == {
        "calls": 7,
        "requests": 12 + 2 + 2,
        "retries": 0,
        "bytes_sent": 0,
        "bytes_received": 0,
        "sequences": 63,
        "tokens": 63 * 5,
    }


def test_tokenize_embed_and_discovery() -> None:
    client = LocalClient(FakeBackend())
    # What a 1.5 server advertises for this backend: LocalClient hosts sessions itself.
    served = INFO.model_copy(update={"protocol_version": "1.5", "capabilities": ["sessions"]})
    assert client.model_info() == served
    assert client.models() == [served]
    assert client.health().models == ["fake-mlm"]
    tok = client.tokenize(["ab cde", "f"], add_special_tokens=True)
    assert tok.tokens == [["[CLS]", "ab", "cde"], ["[CLS]", "f"]]
    assert tok.ids == [[5, 2, 3], [5, 1]]
    emb = client.embed([3, 9])
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb, [[3] * 4, [9] * 4])


def test_preflight_checks_run_before_the_backend() -> None:
    backend = FakeBackend()
    client = LocalClient(backend)
    with pytest.raises(InvalidRequestError) as info:
        client.logits(tagged_prompts(1), [*texts(5), "no mask"], [5])
    assert info.value.field == "texts.5"
    with pytest.raises(InvalidRequestError):
        client.embed([100])
    assert backend.calls == []
    assert client.usage.requests == 0


class _Faulty(FakeBackend):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        raise self.error


def test_backend_violation_is_an_invalid_request() -> None:
    client = LocalClient(_Faulty(ProtocolViolation("mask truncated", field="texts.0")))
    with pytest.raises(InvalidRequestError, match="mask truncated") as info:
        client.logits(tagged_prompts(1), texts(1), [5])
    assert isinstance(info.value.__cause__, ProtocolViolation)


def test_backend_crash_is_a_server_error() -> None:
    boom = RuntimeError("out of memory")
    client = LocalClient(_Faulty(boom))
    with pytest.raises(ServerError) as info:
        client.logits(tagged_prompts(1), texts(1), [5])
    assert info.value.status_code == 500
    assert info.value.__cause__ is boom


def test_backend_answer_of_wrong_shape_is_a_protocol_error() -> None:
    class Short(FakeBackend):
        def logits(
            self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
        ) -> tuple[FloatArray, Usage]:
            out, usage = super().logits(prompts, texts, candidate_ids)
            return out[:, :1], usage

    with pytest.raises(ProtocolError, match="shape"):
        LocalClient(Short()).logits(tagged_prompts(2), texts(3), [5])


def test_close_closes_the_backend() -> None:
    backend = FakeBackend()
    with LocalClient(backend) as client:
        client.model_info()
    assert backend.closed
