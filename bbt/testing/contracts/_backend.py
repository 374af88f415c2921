"""The backend contract: what every :class:`~bbt.server.backend.Backend` must answer over
protocol v1, as a pytest class to subclass.

::

    from bbt.testing.contracts import BackendContract

    class TestMyBackend(BackendContract):
        @pytest.fixture(scope="class")
        @classmethod
        def backend(cls) -> Backend:
            return MyBackend(...)

Every test then runs against your backend, served by the same core as ``bbt serve``
(in-process, no sockets, no FastAPI: :class:`~bbt.testing.CoreTransport`). Override the
``http`` fixture to run them through another transport, e.g. FastAPI's ``TestClient`` over
``create_app(backend)``. Masked and causal LMs are both covered: the tests about mask tokens
skip for a causal LM.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from bbt.protocol import (
    FEATURES_CAPABILITY,
    PROTOCOL_V1,
    EmbeddingsResponse,
    ErrorType,
    FeaturesResponse,
    Health,
    LogitsResponse,
    ModelInfo,
    ModelList,
    Tensor,
    TokenizeResponse,
    wire_json,
)
from bbt.protocol.backend import Backend
from bbt.testing.contracts.requests import assert_envelope, logits_body, prompts, texts


def _logits(http: httpx.Client, body: dict[str, object]) -> np.ndarray[Any, Any]:
    r = http.post("/v1/logits", json=body)
    assert r.status_code == 200, r.text
    return LogitsResponse.model_validate_json(r.content).logits.to_numpy()


def _features(http: httpx.Client, body: dict[str, object]) -> np.ndarray[Any, Any]:
    r = http.post("/v1/features", json=body)
    assert r.status_code == 200, r.text
    return FeaturesResponse.model_validate_json(r.content).features.to_numpy()


def _violations(info: ModelInfo) -> dict[str, tuple[str, dict[str, object], str | None]]:
    """name -> (route, body, expected error field prefix)."""
    lim = info.limits
    h = info.hidden_size
    empty = np.zeros((1, 0, h), np.float32)
    cases: dict[str, tuple[str, dict[str, object], str | None]] = {
        "too many prompts": (
            "/v1/logits",
            logits_body(info, np.zeros((lim.max_prompts_per_request + 1, 0, h), np.float32), b=1),
            "prompts.shape",
        ),
        "prompt too long": (
            "/v1/logits",
            logits_body(info, np.zeros((1, lim.max_prompt_tokens + 1, h), np.float32), b=1),
            "prompts.shape",
        ),
        "too many texts": (
            "/v1/logits",
            logits_body(info, empty, b=lim.max_texts_per_request + 1),
            "texts",
        ),
        "too many candidates": (
            "/v1/logits",
            logits_body(info, empty, candidate_ids=[0] * (lim.max_candidates + 1)),
            "candidate_ids",
        ),
        "candidate out of vocabulary": (
            "/v1/logits",
            logits_body(info, empty, candidate_ids=[info.vocab_size]),
            "candidate_ids",
        ),
        "negative candidate": (
            "/v1/logits",
            logits_body(info, empty, candidate_ids=[-1]),
            "candidate_ids",
        ),
        "wrong width": (
            "/v1/logits",
            logits_body(info, np.zeros((1, 1, h + 1), np.float32)),
            "prompts.shape",
        ),
        "rank 2 prompts": (
            "/v1/logits",
            logits_body(info, np.zeros((1, h), np.float32)),
            "prompts.shape",
        ),
        "text too long": (
            "/v1/logits",
            logits_body(info, empty, texts=["a" * lim.max_text_chars + (info.mask_token or "a")]),
            "texts.0",
        ),
        "nan prompt": (
            "/v1/logits",
            logits_body(info, np.full((1, 1, h), np.nan, np.float32)),
            "prompts.data",
        ),
        "inf prompt": (
            "/v1/logits",
            logits_body(info, np.full((1, 1, h), np.inf, np.float32)),
            "prompts.data",
        ),
        "short data": (
            "/v1/logits",
            logits_body(info, prompts={"dtype": "float32", "shape": [1, 2, h], "data": "AAAA"}),
            "prompts.data",
        ),
        "too many embedding ids": (
            "/v1/embeddings",
            {"model": info.id, "token_ids": [0] * (lim.max_embedding_ids + 1)},
            "token_ids",
        ),
        "embedding id out of range": (
            "/v1/embeddings",
            {"model": info.id, "token_ids": [info.vocab_size]},
            "token_ids",
        ),
        "too many texts to tokenize": (
            "/v1/tokenize",
            {"model": info.id, "texts": ["a"] * (lim.max_texts_per_request + 1)},
            "texts",
        ),
        "text too long to tokenize": (
            "/v1/tokenize",
            {"model": info.id, "texts": ["a" * (lim.max_text_chars + 1)]},
            "texts.0",
        ),
    }
    if info.mask_token is not None:
        cases["no mask"] = (
            "/v1/logits",
            logits_body(info, empty, texts=["no mask here"]),
            "texts.0",
        )
        cases["two masks"] = (
            "/v1/logits",
            logits_body(info, empty, texts=[f"{info.mask_token} {info.mask_token}"]),
            "texts.0",
        )
    p_max = lim.max_prompts_per_request
    b_max = lim.max_texts_per_request
    if p_max * b_max > lim.max_sequences_per_request:
        b = b_max
        p = lim.max_sequences_per_request // b + 1
        cases["too many sequences"] = (
            "/v1/logits",
            logits_body(info, np.zeros((p, 0, h), np.float32), b=b),
            "texts",
        )
    return cases


class BackendContract:
    """The contract of a backend behind the server. Subclass it and provide ``backend``."""

    #: The model kind the backend must advertise ("masked_lm" or "causal_lm"); None: either.
    kind: str | None = None

    @pytest.fixture(scope="class")
    @classmethod
    def backend(cls) -> Backend:
        """The backend under test (class scope or wider: it is built once per class)."""
        raise NotImplementedError("a BackendContract subclass provides a `backend` fixture")

    @pytest.fixture(scope="class")
    @classmethod
    def http(cls, backend: Backend) -> Iterator[httpx.Client]:
        """A client for ``backend`` served over protocol v1, with no API keys."""
        from bbt.server.settings import ServerSettings
        from bbt.testing import CoreTransport

        transport = CoreTransport(backend, ServerSettings(api_keys=[]))
        with httpx.Client(transport=transport, base_url="http://backend-contract") as client:
            yield client

    @pytest.fixture(scope="class")
    @classmethod
    def info(cls, http: httpx.Client) -> ModelInfo:
        return ModelList.model_validate_json(http.get("/v1/models").content).data[0]

    # ------------------------------------------------------------------ discovery

    def test_discovery_describes_the_model(self, http: httpx.Client, backend: Backend) -> None:
        r = http.get("/v1/models")
        assert r.status_code == 200
        assert r.headers["x-bbt-protocol"] == "1"
        assert r.headers["x-request-id"]
        models = ModelList.model_validate_json(r.content)
        assert len(models.data) == 1
        info = models.data[0]
        # A v1 client (no protocol header) sees the backend's info without the 1.1 fields.
        assert info == ModelInfo.model_validate_json(wire_json(backend.info, PROTOCOL_V1))
        assert info.kind in ("masked_lm", "causal_lm")
        if self.kind is not None:
            assert info.kind == self.kind
        assert info.protocol_version == "1"
        if info.kind == "masked_lm":
            assert info.mask_token_id is not None
            assert 0 <= info.mask_token_id < info.vocab_size
        else:  # a causal LM is scored after the text: it has no mask token
            assert info.mask_token is None
        assert "float32" in info.dtypes
        assert info.limits.max_sequences_per_request >= 1
        assert math.isfinite(info.embedding_mean)

    def test_healthz_names_the_model(self, http: httpx.Client, info: ModelInfo) -> None:
        r = http.get("/healthz")
        assert r.status_code == 200
        assert Health.model_validate_json(r.content).models == [info.id]

    # ------------------------------------------------------------------ tokenize

    def test_tokenize_ids_and_tokens_agree(self, http: httpx.Client, info: ModelInfo) -> None:
        body = {"model": info.id, "texts": ["great", texts(info, 1)[0]]}
        r = http.post("/v1/tokenize", json=body)
        assert r.status_code == 200, r.text
        out = TokenizeResponse.model_validate_json(r.content)
        assert out.model == info.id
        assert len(out.ids) == len(out.tokens) == 2
        for ids, toks in zip(out.ids, out.tokens, strict=True):
            assert len(ids) == len(toks) >= 1
            assert all(0 <= i < info.vocab_size for i in ids)
        if info.mask_token_id is not None:
            assert info.mask_token_id in out.ids[1]

    def test_tokenize_special_tokens_add_tokens(self, http: httpx.Client, info: ModelInfo) -> None:
        if info.kind != "masked_lm":
            pytest.skip("a causal tokenizer may add no special token (GPT-2's adds none)")
        plain = http.post("/v1/tokenize", json={"model": info.id, "texts": ["great"]}).json()
        special = http.post(
            "/v1/tokenize", json={"model": info.id, "texts": ["great"], "add_special_tokens": True}
        ).json()
        assert len(special["ids"][0]) > len(plain["ids"][0])

    # ------------------------------------------------------------------ embeddings

    @pytest.mark.parametrize("dtype", ["float32", "float16"])
    def test_embeddings_shape_and_dtype(
        self, http: httpx.Client, info: ModelInfo, dtype: str
    ) -> None:
        ids = [0, info.mask_token_id or 1, info.vocab_size - 1]
        r = http.post("/v1/embeddings", json={"model": info.id, "token_ids": ids, "dtype": dtype})
        assert r.status_code == 200, r.text
        emb = EmbeddingsResponse.model_validate_json(r.content).embeddings
        assert emb.dtype == dtype
        assert emb.shape == [3, info.hidden_size]
        assert np.isfinite(emb.to_numpy()).all()

    def test_embeddings_match_advertised_statistics(
        self, http: httpx.Client, info: ModelInfo
    ) -> None:
        rng = np.random.default_rng(0)
        n = min(info.limits.max_embedding_ids, info.vocab_size, 2048)
        ids = sorted(rng.choice(info.vocab_size, size=n, replace=False).tolist())
        r = http.post("/v1/embeddings", json={"model": info.id, "token_ids": ids})
        emb = EmbeddingsResponse.model_validate_json(r.content).embeddings.to_numpy()
        assert emb.std() == pytest.approx(info.embedding_std, rel=0.25)
        assert abs(emb.mean() - info.embedding_mean) < 0.25 * info.embedding_std

    # ------------------------------------------------------------------ logits

    @pytest.mark.parametrize(("p", "n", "b"), [(1, 1, 1), (3, 4, 2), (2, 0, 3)])
    def test_logits_shape_and_usage(
        self, http: httpx.Client, info: ModelInfo, p: int, n: int, b: int
    ) -> None:
        body = logits_body(info, prompts(p, n, info.hidden_size), b=b, candidate_ids=[0, 1, 2])
        r = http.post("/v1/logits", json=body)
        assert r.status_code == 200, r.text
        out = LogitsResponse.model_validate_json(r.content)
        assert out.model == info.id
        assert out.logits.shape == [p, b, 3]
        assert np.isfinite(out.logits.to_numpy()).all()
        assert out.usage.prompts == p
        assert out.usage.sequences == p * b
        assert out.usage.tokens >= p * b * (n + 1)

    def test_logits_float16_output(self, http: httpx.Client, info: ModelInfo) -> None:
        body = logits_body(info, output_dtype="float16")
        r = http.post("/v1/logits", json=body)
        assert r.status_code == 200, r.text
        assert LogitsResponse.model_validate_json(r.content).logits.dtype == "float16"

    def test_logits_float16_prompts(self, http: httpx.Client, info: ModelInfo) -> None:
        p = prompts(2, 3, info.hidden_size)
        body = logits_body(info, p)
        body["prompts"] = Tensor.from_numpy(p, dtype="float16").model_dump()
        assert _logits(http, body).shape == (2, 2, 2)

    def test_logits_are_deterministic(self, http: httpx.Client, info: ModelInfo) -> None:
        body = logits_body(info, prompts(3, 2, info.hidden_size), b=3)
        np.testing.assert_array_equal(_logits(http, body), _logits(http, body))

    def test_logits_do_not_depend_on_how_work_is_split(
        self, http: httpx.Client, info: ModelInfo
    ) -> None:
        p = prompts(4, 3, info.hidden_size, seed=1)
        b = 5
        cands = [0, 1, 2, 3]
        whole = _logits(http, logits_body(info, p, b=b, candidate_ids=cands))
        all_texts = texts(info, b)
        for i in range(4):
            for j in range(b):
                one = logits_body(info, p[i : i + 1], candidate_ids=cands[::-1])
                one["texts"] = [all_texts[j]]
                part = _logits(http, one)[0, 0, ::-1]
                np.testing.assert_allclose(part, whole[i, j], rtol=1e-4, atol=1e-4)

    def test_prompt_changes_logits(self, http: httpx.Client, info: ModelInfo) -> None:
        zero = _logits(http, logits_body(info, np.zeros((1, 0, info.hidden_size), np.float32)))
        some = _logits(http, logits_body(info, prompts(1, 5, info.hidden_size, scale=1.0)))
        assert not np.allclose(zero, some)

    # ------------------------------------------------------------------ features (1.3)

    @pytest.mark.parametrize("pooling", ["mean", "mask"])
    def test_features_shape_usage_and_prompt(
        self, http: httpx.Client, info: ModelInfo, backend: Backend, pooling: str
    ) -> None:
        """Protocol 1.3: a backend listing ``features`` answers [P, B, F], finite, that
        depend on the prompt and not on how the work is split; one that does not list it
        answers 404 naming the capability."""
        body: dict[str, object] = {"model": info.id, "texts": texts(info, 3), "pooling": pooling}
        if FEATURES_CAPABILITY not in backend.info.capabilities:  # ``info`` is v1's view
            env = assert_envelope(http.post("/v1/features", json=body), 404)
            assert FEATURES_CAPABILITY in env.error.message
            return
        bare = _features(http, body)
        assert bare.shape[:2] == (1, 3)
        assert np.isfinite(bare).all()
        p = prompts(2, 3, info.hidden_size, scale=1.0)
        body["prompts"] = Tensor.from_numpy(p).model_dump()
        r = http.post("/v1/features", json=body)
        assert r.status_code == 200, r.text
        out = FeaturesResponse.model_validate_json(r.content)
        assert out.pooling == pooling
        assert out.usage.prompts == 2
        assert out.usage.sequences == 6
        assert out.usage.tokens >= 6 * 4
        feats = out.features.to_numpy()
        assert feats.shape == (2, 3, bare.shape[2])
        assert not np.allclose(feats[0], bare[0])
        body["prompts"] = Tensor.from_numpy(p[1:]).model_dump()
        body["texts"] = texts(info, 3)[2:]
        np.testing.assert_allclose(_features(http, body)[0, 0], feats[1, 2], rtol=1e-4, atol=1e-4)

    # ------------------------------------------------------------------ limits and violations

    def test_every_limit_is_enforced_with_an_envelope(
        self, http: httpx.Client, info: ModelInfo
    ) -> None:
        for name, (route, body, field) in _violations(info).items():
            r = http.post(route, json=body)
            env = assert_envelope(r)
            assert r.status_code in (400, 413, 422), (name, r.status_code, r.text)
            assert env.error.type == ErrorType.invalid_request, name
            assert env.error.field is not None, name
            assert env.error.field.startswith(field or ""), (name, env.error.field)

    @pytest.mark.parametrize("route", ["/v1/logits", "/v1/embeddings", "/v1/tokenize"])
    def test_unknown_model_is_404(self, http: httpx.Client, info: ModelInfo, route: str) -> None:
        body: dict[str, object] = {
            "/v1/logits": logits_body(info),
            "/v1/embeddings": {"model": info.id, "token_ids": [0]},
            "/v1/tokenize": {"model": info.id, "texts": ["a"]},
        }[route]
        body["model"] = info.id + "-nope"
        env = assert_envelope(http.post(route, json=body), 404)
        assert env.error.type == ErrorType.not_found
        assert env.error.field == "model"


__all__ = ["BackendContract"]
