"""A tiny protocol v1 service for client tests: a fake backend behind an httpx handler.

The fake model's answers encode *where* they came from, so tests can check that split work
is reassembled in order: logit ``[p, b, c]`` is ``1000 * prompt_tag + 10 * text_tag + c``,
where ``prompt_tag`` is ``prompts[p, 0, 0]`` and ``text_tag`` the number in "text 7 [MASK]".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np

from bbt.protocol import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorBody,
    ErrorEnvelope,
    ErrorType,
    Health,
    Limits,
    LogitsRequest,
    LogitsResponse,
    ModelInfo,
    ModelList,
    ProtocolViolation,
    Tensor,
    TokenizeRequest,
    TokenizeResponse,
    Usage,
    check_embeddings_request,
    check_logits_request,
    check_tokenize_request,
)
from bbt.server.backend import Backend, FloatArray, IntArray

API_KEY = "sk-test-0123456789abcdef"
BASE_URL = "http://bbt.test"

INFO = ModelInfo(
    id="fake-mlm",
    hidden_size=4,
    vocab_size=100,
    num_layers=1,
    max_sequence_length=64,
    mask_token="[MASK]",
    mask_token_id=3,
    embedding_mean=0.0,
    embedding_std=0.5,
    dtypes=["float32", "float16"],
    limits=Limits(
        max_prompts_per_request=3,
        max_texts_per_request=4,
        max_sequences_per_request=8,
        max_prompt_tokens=5,
        max_candidates=4,
        max_text_chars=200,
        max_embedding_ids=5,
        max_body_bytes=1_000_000,
    ),
)


def text_tag(text: str) -> int:
    return int(text.split()[1])


def texts(n: int) -> list[str]:
    return [f"text {i} [MASK]" for i in range(n)]


def tagged_prompts(n_prompts: int, n_tokens: int = 2, hidden: int = 4) -> np.ndarray[Any, Any]:
    prompts = np.zeros((n_prompts, n_tokens, hidden), dtype=np.float32)
    prompts[:, 0, 0] = np.arange(n_prompts)
    return prompts


def expected_logits(n_prompts: int, n_texts: int, n_cand: int) -> np.ndarray[Any, Any]:
    p = np.arange(n_prompts)[:, None, None]
    b = np.arange(n_texts)[None, :, None]
    c = np.arange(n_cand)[None, None, :]
    return (1000 * p + 10 * b + c).astype(np.float32)


class FakeBackend(Backend):
    """Deterministic answers that say which prompt, text and candidate they belong to."""

    def __init__(self, info: ModelInfo = INFO) -> None:
        self._info = info
        self.calls: list[tuple[str, int]] = []  # (method, items in the call)
        self.closed = False

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        self.calls.append(("tokenize", len(texts)))
        tokens = [(["[CLS]"] if add_special_tokens else []) + t.split() for t in texts]
        return [[len(w) for w in ts] for ts in tokens], tokens

    def embed(self, token_ids: IntArray) -> FloatArray:
        self.calls.append(("embed", len(token_ids)))
        return np.repeat(token_ids.astype(np.float32)[:, None], self._info.hidden_size, axis=1)

    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        self.calls.append(("logits", len(prompts) * len(texts)))
        p = prompts[:, 0, 0][:, None, None] if prompts.shape[1] else np.zeros((len(prompts), 1, 1))
        b = np.array([text_tag(t) for t in texts], dtype=np.float32)[None, :, None]
        c = np.arange(len(candidate_ids), dtype=np.float32)[None, None, :]
        out = (1000 * p + 10 * b + c).astype(np.float32)
        n_seq = len(prompts) * len(texts)
        return out, Usage(
            prompts=len(prompts), sequences=n_seq, tokens=n_seq * (prompts.shape[1] + 3)
        )

    def close(self) -> None:
        self.closed = True


def error_response(
    status: int, error_type: ErrorType, message: str, field: str | None = None, **headers: str
) -> httpx.Response:
    body = ErrorEnvelope(error=ErrorBody(type=error_type, message=message, field=field))
    return httpx.Response(
        status,
        content=body.model_dump_json().encode(),
        headers={"Content-Type": "application/json", **headers},
    )


Fault = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class FakeService:
    """An httpx handler speaking protocol v1 over :class:`FakeBackend`.

    ``faults`` are served first, one per request (a response to return, an exception to
    raise); ``requests`` records everything received.
    """

    def __init__(self, backend: Backend | None = None, api_key: str | None = API_KEY) -> None:
        self.backend = backend or FakeBackend()
        self.api_key = api_key
        self.requests: list[httpx.Request] = []
        self.faults: list[Fault] = []
        self.response_bytes = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        response = self._answer(request)
        self.response_bytes += len(response.content)
        return response

    def _answer(self, request: httpx.Request) -> httpx.Response:
        if self.faults:
            fault = self.faults.pop(0)
            if isinstance(fault, Exception):
                raise fault
            if isinstance(fault, httpx.Response):
                return fault
            return fault(request)
        if self.api_key and request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return error_response(401, ErrorType.authentication, "missing or wrong API key")
        info = self.backend.info
        path = request.url.path
        try:
            if path == "/healthz":
                return _ok(Health(models=[info.id]))
            if path == "/v1/models":
                return _ok(ModelList(data=[info]))
            body = json.loads(request.content)
            if path == "/v1/tokenize":
                treq = TokenizeRequest.model_validate(body)
                check_tokenize_request(treq, info)
                ids, toks = self.backend.tokenize(treq.texts, treq.add_special_tokens)
                return _ok(TokenizeResponse(model=info.id, ids=ids, tokens=toks))
            if path == "/v1/embeddings":
                ereq = EmbeddingsRequest.model_validate(body)
                check_embeddings_request(ereq, info)
                emb = self.backend.embed(np.asarray(ereq.token_ids, dtype=np.int64))
                return _ok(EmbeddingsResponse(model=info.id, embeddings=Tensor.from_numpy(emb)))
            if path == "/v1/logits":
                lreq = LogitsRequest.model_validate(body)
                d = check_logits_request(lreq, info)
                out, usage = self.backend.logits(d.prompts, d.texts, d.candidate_ids)
                return _ok(
                    LogitsResponse(
                        model=info.id,
                        logits=Tensor.from_numpy(out, lreq.output_dtype),
                        usage=usage,
                    )
                )
        except ProtocolViolation as exc:
            return error_response(
                404 if exc.error_type is ErrorType.not_found else 422,
                exc.error_type,
                exc.message,
                exc.field,
            )
        return error_response(404, ErrorType.not_found, f"no route {path}")


def _ok(model: Any) -> httpx.Response:
    return httpx.Response(
        200,
        content=model.model_dump_json().encode(),
        headers={"Content-Type": "application/json", "X-BBT-Protocol": "1"},
    )


class Waits(list[float]):
    """The retry waits a client asked for, recorded instead of slept."""
