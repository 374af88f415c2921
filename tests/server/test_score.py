"""The score operation on the server (protocol 1.6): ``/v1/score`` on the causal mock (its
toy bigram LM); a masked model answers 404 naming the capability. The Hugging Face causal
backend's scores are checked in tests/server/test_hf_score.py."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from bbt.protocol import PROTOCOL_HEADER, SCORE_CAPABILITY, ModelList, ScoreResponse
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app
from bbt.server.backend import Scores, supports

from .helpers import assert_envelope

TEXTS = ["the movie was great", "great was the movie", "fine", "a bad and boring plot"]


@pytest.fixture(scope="module")
def served() -> tuple[TestClient, MockBackend]:
    backend = MockBackend(causal=True)
    return TestClient(create_app(backend, ServerSettings(api_keys=[]))), backend


def test_the_causal_mock_answers_its_toy_lm_scores(served: tuple[TestClient, MockBackend]) -> None:
    client, backend = served
    assert supports(backend, Scores)
    r = client.post("/v1/score", json={"model": backend.info.id, "texts": TEXTS})
    assert r.status_code == 200, r.text
    got = ScoreResponse.model_validate_json(r.content)
    sums, counts, usage = backend.score(TEXTS)
    assert got.logprobs == sums
    assert got.token_counts == counts == [3, 3, 0, 4]  # every token but the first (no BOS)
    assert all(s < 0 for s, c in zip(sums, counts, strict=True) if c)
    assert got.logprobs[2] == 0.0  # one token: nothing to predict
    assert (usage.sequences, usage.tokens) == (4, 4 + 4 + 1 + 5)
    assert got.usage == usage
    # Same words, another order: another probability (a bigram model sees the order).
    assert got.logprobs[0] != got.logprobs[1]
    # Each text scores the same alone.
    for text, s in zip(TEXTS, sums, strict=True):
        assert backend.score([text])[0] == [s]


def test_the_capability_is_listed_to_1_6_clients_only(
    served: tuple[TestClient, MockBackend],
) -> None:
    client, _ = served
    answer = client.get("/v1/models", headers={PROTOCOL_HEADER: "1.6"})
    new = ModelList.model_validate_json(answer.content)
    assert SCORE_CAPABILITY in new.data[0].capabilities
    old = client.get("/v1/models", headers={PROTOCOL_HEADER: "1.3"}).json()
    assert SCORE_CAPABILITY not in old["data"][0]["capabilities"]


def test_a_masked_model_answers_404_naming_the_capability() -> None:
    backend = MockBackend()
    assert not supports(backend, Scores)
    assert SCORE_CAPABILITY not in backend.info.capabilities
    client = TestClient(create_app(backend, ServerSettings(api_keys=[])))
    env = assert_envelope(
        client.post("/v1/score", json={"model": backend.info.id, "texts": ["a"]}), 404
    )
    assert SCORE_CAPABILITY in env.error.message
    assert env.error.field == "model"


@pytest.mark.parametrize(
    ("body", "field"),
    [({"model": "nope"}, "model"), ({"texts": []}, "texts"), ({"pooling": "mean"}, "pooling")],
    ids=["model", "no-texts", "unknown-field"],
)
def test_bad_score_requests_are_one_clear_error(
    served: tuple[TestClient, MockBackend], body: dict[str, Any], field: str
) -> None:
    client, backend = served
    r = client.post("/v1/score", json={"model": backend.info.id, "texts": ["a b"], **body})
    env = assert_envelope(r)
    assert r.status_code in (400, 404, 422)
    assert (env.error.field or "").startswith(field)
