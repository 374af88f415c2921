"""Splitting work over the server's limits, in-order reassembly, and pre-flight checks."""

from __future__ import annotations

import json
from collections.abc import Callable

import numpy as np
import pytest

from bbt.client import Client
from bbt.client._base import plan_grid
from bbt.errors import ConfigurationError, InvalidRequestError
from bbt.protocol import Limits

from .fakes import INFO, FakeService, expected_logits, tagged_prompts, texts

MakeClient = Callable[..., Client]


def _limits(**kw: int) -> Limits:
    base = {
        "max_prompts_per_request": 100,
        "max_texts_per_request": 100,
        "max_sequences_per_request": 10_000,
        "max_prompt_tokens": 50,
        "max_candidates": 10,
        "max_text_chars": 100,
        "max_embedding_ids": 100,
        "max_body_bytes": 10_000_000,
    }
    return Limits(**{**base, **kw})


@pytest.mark.parametrize(
    ("p", "b", "limits", "grid"),
    [
        (20, 32, _limits(), (1, 1)),
        (20, 32, _limits(max_prompts_per_request=8), (3, 1)),
        (20, 32, _limits(max_texts_per_request=10), (1, 4)),
        (20, 32, _limits(max_sequences_per_request=320), (2, 1)),
        (20, 32, _limits(max_sequences_per_request=32), (20, 1)),
        (20, 32, _limits(max_sequences_per_request=16), (20, 2)),
        (3, 5, _limits(max_prompts_per_request=1, max_texts_per_request=1), (3, 5)),
    ],
)
def test_plan_grid_takes_the_fewest_requests(
    p: int, b: int, limits: Limits, grid: tuple[int, int]
) -> None:
    assert plan_grid(p, b, limits) == grid


def test_plan_grid_respects_the_body_limit() -> None:
    limits = _limits(max_body_bytes=4096 + 4 * 250 + 3 * 2000)
    # Three 2000-byte prompts fit beside four 250-byte texts; four do not.
    assert plan_grid(10, 4, limits, prompt_bytes=2000, text_bytes=250) == (4, 1)
    # Fewer texts per request leave room for more prompts when that needs fewer requests.
    limits = _limits(max_body_bytes=4096 + 100 * 250 + 10 * 2000)
    assert plan_grid(10, 200, limits, prompt_bytes=2000, text_bytes=250) == (1, 2)
    assert plan_grid(40, 200, limits, prompt_bytes=2000, text_bytes=250) == (4, 2)


def test_plan_grid_refuses_a_prompt_larger_than_the_body_limit() -> None:
    with pytest.raises(InvalidRequestError) as info:
        plan_grid(1, 1, _limits(max_body_bytes=5000), prompt_bytes=10_000)
    assert info.value.error_type == "payload_too_large"


@pytest.mark.parametrize(("n_prompts", "n_texts"), [(1, 1), (3, 2), (7, 9), (20, 32)])
def test_logits_are_split_and_reassembled_in_order(
    make_client: MakeClient, service: FakeService, n_prompts: int, n_texts: int
) -> None:
    client = make_client()
    out = client.logits(tagged_prompts(n_prompts), texts(n_texts), [5, 6, 7])
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected_logits(n_prompts, n_texts, 3))
    limits = INFO.limits
    sizes = []
    for request in service.requests:
        if request.url.path != "/v1/logits":
            continue
        body = json.loads(request.content)
        p, b = body["prompts"]["shape"][0], len(body["texts"])
        assert p <= limits.max_prompts_per_request
        assert b <= limits.max_texts_per_request
        assert p * b <= limits.max_sequences_per_request
        sizes.append(p * b)
    assert sum(sizes) == n_prompts * n_texts


def test_float16_prompts_go_on_the_wire_as_float16(
    make_client: MakeClient, service: FakeService
) -> None:
    client = make_client(dtype="float16")
    out = client.logits(tagged_prompts(2), texts(2), [5])
    np.testing.assert_array_equal(out, expected_logits(2, 2, 1))
    body = json.loads(service.requests[-1].content)
    assert body["prompts"]["dtype"] == "float16"


def test_tokenize_is_split_and_merged_in_order(
    make_client: MakeClient, service: FakeService
) -> None:
    words = [f"w{'x' * i} [MASK]" for i in range(10)]
    resp = make_client().tokenize(words)
    assert resp.model == "fake-mlm"
    assert resp.tokens == [w.split() for w in words]
    assert resp.ids == [[len(t) for t in w.split()] for w in words]
    calls = [c for c in service.backend.calls if c[0] == "tokenize"]  # type: ignore[attr-defined]
    assert calls == [("tokenize", 4), ("tokenize", 4), ("tokenize", 2)]


def test_embed_is_split_and_concatenated_in_order(
    make_client: MakeClient, service: FakeService
) -> None:
    ids = list(range(12))
    emb = make_client().embed(ids)
    assert emb.shape == (12, INFO.hidden_size)
    assert emb.dtype == np.float32
    np.testing.assert_array_equal(emb[:, 0], np.arange(12, dtype=np.float32))
    assert [c[1] for c in service.backend.calls] == [5, 5, 2]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.logits(tagged_prompts(2, hidden=3), texts(2), [5]), "prompts.shape"),
        (lambda c: c.logits(tagged_prompts(2, n_tokens=6), texts(2), [5]), "prompts.shape"),
        (lambda c: c.logits(np.zeros((2, 4)), texts(2), [5]), "prompts"),
        (lambda c: c.logits(tagged_prompts(2), texts(2), [500]), "candidate_ids.0"),
        (lambda c: c.logits(tagged_prompts(2), texts(2), [1, 2, 3, 4, 5]), "candidate_ids"),
        (lambda c: c.logits(tagged_prompts(2), texts(2), []), "candidate_ids"),
        (lambda c: c.logits(tagged_prompts(2), [], [5]), "texts"),
        # The bad text is number 6 of the whole batch although it sits in the second request.
        (lambda c: c.logits(tagged_prompts(1), [*texts(6), "no mask"], [5]), "texts.6"),
        (
            lambda c: c.logits(np.full((1, 1, 4), np.nan, dtype=np.float32), texts(1), [5]),
            "prompts.data",
        ),
        (
            lambda c: c.logits(np.full((1, 1, 4), 1e6, dtype=np.float32), texts(1), [5]),
            "prompts",
        ),
        (lambda c: c.tokenize([*texts(5), "x" * 201]), "texts.5"),
        (lambda c: c.tokenize([]), "texts"),
        (lambda c: c.embed([1, 2, 3, 4, 5, 6, 100]), "token_ids.6"),
        (lambda c: c.embed([]), "token_ids"),
    ],
)
def test_preflight_checks_cost_no_request(
    make_client: MakeClient,
    service: FakeService,
    call: Callable[[Client], object],
    field: str,
) -> None:
    client = make_client(dtype="float16")
    client.model_info()
    before = len(service.requests)
    with pytest.raises(InvalidRequestError) as info:
        call(client)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert len(service.requests) == before
    assert client.usage.calls == 0


def test_unsupported_dtype_is_refused_before_sending(
    make_client: MakeClient, service: FakeService
) -> None:
    service.backend._info = INFO.model_copy(update={"dtypes": ["float32"]})  # type: ignore[attr-defined]
    client = make_client(dtype="float16")
    with pytest.raises(InvalidRequestError, match="float16"):
        client.logits(tagged_prompts(1), texts(1), [5])
    assert [r.url.path for r in service.requests] == ["/v1/models"]


def test_model_info_is_cached_and_picks_the_named_model(
    make_client: MakeClient, service: FakeService
) -> None:
    client = make_client(model="fake-mlm")
    assert client.model_info().id == "fake-mlm"
    assert client.model_info() is client.model_info()
    assert [r.url.path for r in service.requests] == ["/v1/models"]


def test_unknown_model_is_a_configuration_error(make_client: MakeClient) -> None:
    with pytest.raises(ConfigurationError, match=r"'other'.*served: 'fake-mlm'"):
        make_client(model="other").model_info()


def test_body_limit_splits_logits_further(make_client: MakeClient, service: FakeService) -> None:
    limit = 4096 + 400
    service.backend._info = INFO.model_copy(  # type: ignore[attr-defined]
        update={"limits": INFO.limits.model_copy(update={"max_body_bytes": limit})}
    )
    client = make_client()
    out = client.logits(tagged_prompts(6), texts(4), [5])
    np.testing.assert_array_equal(out, expected_logits(6, 4, 1))
    bodies = [r.content for r in service.requests if r.url.path == "/v1/logits"]
    # Without the body limit 6 x 4 takes 3 requests (2 prompts x 4 texts each).
    assert len(bodies) > 3
    assert all(len(b) <= limit for b in bodies)
