"""The bbt protocol on the client core: what :class:`Client` and :class:`AsyncClient` share.

The two only differ in how they send a request. The wire mechanics (headers, retries,
error mapping, usage) are :mod:`bbt.client.transport`'s, the planning of requests over the
server's limits :mod:`bbt.client.planning`'s; this adds the protocol: its version header,
its URL credentials, and reading its answers into the protocol's models.

Each API call is written once, here, as an *exchange* (the sans-IO style of h11): a
generator that yields the :class:`Batch` of requests it needs next, receives their answers
(or has the failure thrown in) and returns the call's result. The sync and async clients
only drive exchanges, each with its own sending code (``Client._run``,
``AsyncClient._run``), so the request building, the decoding and the usage accounting
cannot drift apart.

A few names that other modules imported from here are kept (see ``__all__``); new code
imports them from the public modules.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Concatenate, Generic, ParamSpec, Protocol, TypeVar, cast

import httpx
import numpy as np
from pydantic import BaseModel, SecretStr, ValidationError

from bbt.client._config import DEFAULT_ENV_FILE, ClientSettings
from bbt.client.features import FeaturesChunk, assemble_features, plan_features
from bbt.client.planning import (
    BODY_SLACK,
    FloatArray,
    LogitsChunk,
    decode_tensor,
    plan_embed,
    plan_grid,
    plan_logits,
    plan_prompt_logits,
    plan_tokenize,
    prompt_logits_into,
    prompt_path,
    select_model,
)
from bbt.client.projection_sessions import (
    ProjectionSession,
    SessionChunk,
    SessionOp,
    accept_open,
    is_session_gone,
    open_request,
)
from bbt.client.redaction import redact, redact_url, split_userinfo
from bbt.client.transport import (
    BACKOFF_BASE,
    HTTPCore,
    RawBody,
    is_retryable,
    parse_retry_after,
    status_error,
    transport_error,
)
from bbt.errors import ProtocolError
from bbt.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    REQUEST_ID_HEADER,
    DType,
    EmbeddingsRequest,
    EmbeddingsResponse,
    FeaturesResponse,
    LogitsResponse,
    ModelInfo,
    ModelList,
    PromptCreateRequest,
    SessionClosed,
    SessionInfo,
    StoredPrompt,
    Tensor,
    TokenizeRequest,
    TokenizeResponse,
    speaks,
)
from bbt.protocol.features import Pooling

M = TypeVar("M", bound=BaseModel)
P = ParamSpec("P")
R = TypeVar("R")
#: The transport a client takes: ``httpx.BaseTransport`` or ``httpx.AsyncBaseTransport``.
TransportT = TypeVar("TransportT")
C = TypeVar("C", bound="BaseClient[Any]")

# Names other modules imported from here before the public modules existed (tests, the
# CLI's dry run, benchmarks); new code imports them from bbt.client.planning/.redaction/
# .transport.
_BODY_SLACK = BODY_SLACK

__all__ = [
    "BACKOFF_BASE",
    "BaseClient",
    "LogitsChunk",
    "is_retryable",
    "parse_retry_after",
    "plan_grid",
    "plan_logits",
    "redact_url",
    "transport_error",
]


class Chunk(Protocol):
    """Where one logits request's answer goes in the call's ``[P, B, C]`` result (a
    :class:`LogitsChunk`, or a session's chunk)."""

    @property
    def p0(self) -> int: ...
    @property
    def p1(self) -> int: ...
    @property
    def b0(self) -> int: ...
    @property
    def b1(self) -> int: ...
    @property
    def rows_sent(self) -> int: ...


class Sendable(Protocol):
    """One request's share of a split call: its body and the sequences it carries."""

    @property
    def body(self) -> BaseModel | RawBody: ...
    @property
    def sequences(self) -> int: ...


@dataclass(frozen=True)
class Call:
    """One request of an exchange, and the protocol model its answer is read as."""

    method: str
    path: str
    body: BaseModel | RawBody | None
    model: type[BaseModel]
    #: Logits sequences the request carries: its read timeout grows with them.
    sequences: int = 0


@dataclass(frozen=True)
class Batch:
    """The requests an exchange needs next, answered in order.

    The async client sends them concurrently (at most ``max_concurrency`` at a time); the
    sync client one after another, unless ``fan_out`` (a logits call spread over server
    replicas on its fan-out threads), as each always did.
    """

    calls: Sequence[Call]
    fan_out: bool = False


#: An API call without I/O: yields :class:`Batch` es, is sent their answers (or has the
#: failure thrown in), returns the call's result.
Exchange = Generator[Batch, Any, R]


class Steps(Generic[R]):
    """An exchange driven one batch at a time: what the clients' ``_run`` loops over.

    :attr:`batch` is what to send next (``None`` once the exchange is done, with
    :attr:`result` set); hand back the answers with :meth:`answer` or the failure with
    :meth:`fail`, which raises it unless the exchange handles it.
    """

    def __init__(self, exchange: Exchange[R]) -> None:
        self._exchange = exchange
        self.result: R | None = None
        self.batch: Batch | None = None
        self._step(None, None)

    def answer(self, answers: list[Any]) -> None:
        self._step(answers, None)

    def fail(self, error: Exception) -> None:
        self._step(None, error)

    def _step(self, answers: list[Any] | None, error: Exception | None) -> None:
        try:
            if error is None:
                self.batch = self._exchange.send(answers)
            else:
                self.batch = self._exchange.throw(error)
        except StopIteration as stop:
            self.batch, self.result = None, stop.value


class BaseClient(HTTPCore, Generic[TransportT]):
    """The bbt protocol's requests and answers on :class:`HTTPCore`: no I/O.

    Arguments left as ``None`` come from ``BBT_*`` environment variables, then from
    ``env_file`` (``None`` reads no file), then from the defaults in :class:`ClientSettings`.
    """

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        model: str | None = None,
        *,
        timeout: float | None = None,
        max_retries: int | None = None,
        dtype: DType | None = None,
        max_retry_wait: float | None = None,
        connect_timeout: float | None = None,
        timeout_per_sequence: float | None = None,
        max_concurrency: int | None = None,
        transport: TransportT | None = None,
        env_file: str | Path | None = DEFAULT_ENV_FILE,
        rng: random.Random | None = None,
    ) -> None:
        settings = ClientSettings(
            env_file=env_file,
            base_url=base_url,
            api_key=api_key,
            model=model,
            timeout=timeout,
            max_retries=max_retries,
            dtype=dtype,
            max_retry_wait=max_retry_wait,
            connect_timeout=connect_timeout,
            timeout_per_sequence=timeout_per_sequence,
            max_concurrency=max_concurrency,
        )
        self._init(settings, transport, rng)

    @classmethod
    def from_settings(
        cls: type[C],
        settings: ClientSettings,
        *,
        transport: TransportT | None = None,
        rng: random.Random | None = None,
    ) -> C:
        """A client on already resolved settings (the CLI resolves them once)."""
        self = cls.__new__(cls)
        self._init(settings, transport, rng)
        return self

    def _init(
        self, settings: ClientSettings, transport: TransportT | None, rng: random.Random | None
    ) -> None:
        # Credentials in the URL travel as Basic auth, never as part of a URL that is
        # shown, logged or recorded (base_url, repr, httpx's request log, run directories).
        self._base_url, self._url_auth = split_userinfo(settings.require_base_url())
        super().__init__(settings, rng=rng)
        self._info: ModelInfo | None = None
        self._connect(settings, transport)

    def _connect(self, settings: ClientSettings, transport: TransportT | None) -> None:
        """Open the connection pool (the sync or the async one)."""
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        """The service root, without any ``user:password@`` the configured URL carried
        (those credentials are still sent, as Basic auth)."""
        return self._base_url

    def __repr__(self) -> str:
        key = "'***'" if self._settings.api_key is not None else "None"
        return (
            f"{type(self).__name__}(base_url={redact_url(self._base_url)!r}, "
            f"model={self._settings.model!r}, api_key={key})"
        )

    # ---------------------------------------------------------------- requests

    def _headers(self) -> dict[str, str]:
        return {PROTOCOL_HEADER: PROTOCOL_VERSION, **super()._headers()}

    def _build_request(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        body: BaseModel | RawBody | None,
        sequences: int = 0,
    ) -> httpx.Request:
        if isinstance(body, RawBody):
            return self._new_request(http, method, path, body.content, body.content_type, sequences)
        # Serialise here, not through httpx's json=, so bytes_sent is the real body size.
        content = None if body is None else body.model_dump_json().encode()
        content_type = None if body is None else "application/json"
        return self._new_request(http, method, path, content, content_type, sequences)

    @staticmethod
    def _api(path: str) -> str:
        return f"{API_PREFIX}{path}"

    # ---------------------------------------------------------------- responses

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        """The answer as ``model``; an error answer raised as :mod:`bbt.errors` says.
        The sender has counted its bytes."""
        if not response.is_success:
            raise status_error(response, self._settings.api_key)
        request_id = response.headers.get(REQUEST_ID_HEADER)
        version = response.headers.get(PROTOCOL_HEADER)
        if not speaks(version):
            raise ProtocolError(
                f"server speaks protocol {version!r}; this client speaks {PROTOCOL_VERSION!r}",
                request_id=request_id,
            )
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            # A short summary: the full pydantic text can echo megabytes of base64.
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:3]
            )
            raise ProtocolError(
                redact(
                    f"response is not a valid {model.__name__}: {detail}", self._settings.api_key
                ),
                request_id=request_id,
            ) from exc

    # ---------------------------------------------------------------- results

    def _logits_into(self, out: FloatArray, chunk: Chunk, resp: LogitsResponse) -> None:
        """Place one chunk's answer at its place in ``out`` [P, B, C]; count its usage."""
        shape = [chunk.rows_sent, chunk.b1 - chunk.b0, out.shape[2]]
        got = decode_tensor(resp.logits, shape, "logits")
        out[chunk.p0 : chunk.p1, chunk.b0 : chunk.b1] = got[: chunk.p1 - chunk.p0]
        self._usage.sequences += resp.usage.sequences
        self._usage.tokens += resp.usage.tokens

    def _tokenize_result(
        self, requests: list[TokenizeRequest], responses: list[TokenizeResponse]
    ) -> TokenizeResponse:
        ids: list[list[int]] = []
        tokens: list[list[str]] = []
        for req, resp in zip(requests, responses, strict=True):
            if len(resp.ids) != len(req.texts) or len(resp.tokens) != len(req.texts):
                raise ProtocolError(
                    f"tokenize answered {len(resp.ids)} id lists and {len(resp.tokens)} token "
                    f"lists for {len(req.texts)} texts"
                )
            ids.extend(resp.ids)
            tokens.extend(resp.tokens)
        return TokenizeResponse(model=requests[0].model, ids=ids, tokens=tokens)

    def _embed_result(
        self, info: ModelInfo, requests: list[EmbeddingsRequest], tensors: list[Tensor]
    ) -> FloatArray:
        parts = [
            decode_tensor(t, [len(req.token_ids), info.hidden_size], "embeddings")
            for req, t in zip(requests, tensors, strict=True)
        ]
        return np.concatenate(parts, axis=0)

    def _logits_result(
        self, chunks: Sequence[Chunk], responses: list[LogitsResponse], n_texts: int, n_cand: int
    ) -> FloatArray:
        """The call's logits [P, B, C] from its chunks' answers; the call is counted."""
        n_prompts = chunks[-1].p1
        out = np.empty((n_prompts, n_texts, n_cand), dtype=np.float32)
        for chunk, resp in zip(chunks, responses, strict=True):
            self._logits_into(out, chunk, resp)
        self._usage.calls += n_prompts
        return out

    # ---------------------------------------------------------------- exchanges (no I/O)

    def _exchange(
        self, method: str, path: str, body: BaseModel | RawBody | None, model: type[M], seq: int = 0
    ) -> Exchange[M]:
        """One request; its answer read as ``model``."""
        (answer,) = yield Batch([Call(method, path, body, model, seq)])
        return cast(M, answer)

    def _exchange_fan_out(
        self, path: str, model: type[M], chunks: Sequence[Sendable]
    ) -> Exchange[list[M]]:
        """A split call's requests to ``path``, spread over the server replicas on the
        fan-out threads; their answers, in order."""
        calls = [Call("POST", self._api(path), c.body, model, c.sequences) for c in chunks]
        return cast(list[M], (yield Batch(calls, fan_out=True)))

    def _exchange_models(self) -> Exchange[list[ModelInfo]]:
        return (yield from self._exchange("GET", self._api("/models"), None, ModelList)).data

    def _exchange_model_info(self) -> Exchange[ModelInfo]:
        if self._info is None:
            self._info = select_model((yield from self._exchange_models()), self._settings.model)
        return self._info

    def _exchange_tokenize(
        self, texts: Sequence[str], add_special_tokens: bool
    ) -> Exchange[TokenizeResponse]:
        info = yield from self._exchange_model_info()
        requests = plan_tokenize(info, texts, add_special_tokens)
        path = self._api("/tokenize")
        responses = yield Batch([Call("POST", path, r, TokenizeResponse) for r in requests])
        return self._tokenize_result(requests, responses)

    def _exchange_embed(self, token_ids: Sequence[int]) -> Exchange[FloatArray]:
        info = yield from self._exchange_model_info()
        requests = plan_embed(info, token_ids)
        path = self._api("/embeddings")
        responses = yield Batch([Call("POST", path, r, EmbeddingsResponse) for r in requests])
        return self._embed_result(info, requests, [r.embeddings for r in responses])

    def _exchange_logits(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> Exchange[FloatArray]:
        info = yield from self._exchange_model_info()
        limits = self._settings.dtype, self._settings.max_concurrency
        chunks = plan_logits(info, prompts, texts, candidate_ids, *limits)
        responses = yield from self._exchange_fan_out("/logits", LogitsResponse, chunks)
        return self._logits_result(chunks, responses, len(texts), len(candidate_ids))

    def _exchange_store(
        self,
        plan: Callable[Concatenate[ModelInfo, P], PromptCreateRequest],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Exchange[StoredPrompt]:
        """Store the prompt that ``plan(info, *args)`` describes for the model (its values,
        or A z + p0)."""
        req = plan((yield from self._exchange_model_info()), *args, **kwargs)
        return (yield from self._exchange("POST", self._api("/prompts"), req, StoredPrompt))

    def _exchange_prompt_logits(
        self, prompt_id: str, texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> Exchange[FloatArray]:
        info = yield from self._exchange_model_info()
        path = prompt_path(prompt_id) + "/logits"
        chunks = plan_prompt_logits(info, texts, candidate_ids, self._settings.dtype)
        calls = [Call("POST", path, c.request, LogitsResponse, c.b1 - c.b0) for c in chunks]
        responses = yield Batch(calls)
        out = np.empty((len(texts), len(candidate_ids)), dtype=np.float32)
        for chunk, resp in zip(chunks, responses, strict=True):
            prompt_logits_into(out, chunk, resp, self._usage)
        self._usage.calls += 1
        return out

    def _exchange_open(self, session: ProjectionSession, reopening: bool) -> Exchange[None]:
        req = open_request((yield from self._exchange_model_info()), session)
        answer = yield from self._exchange("POST", self._api("/sessions"), req, SessionInfo)
        accept_open(session, answer, reopening)

    def _exchange_features(
        self, texts: Sequence[str], prompts: np.ndarray[Any, Any] | None, pooling: Pooling
    ) -> Exchange[FloatArray]:
        info = yield from self._exchange_model_info()
        limits = self._settings.dtype, self._settings.max_concurrency
        chunks = plan_features(info, texts, prompts, pooling, *limits)
        answers = yield from self._exchange_fan_out("/features", FeaturesResponse, chunks)
        return assemble_features(chunks, answers, self._usage)

    def _exchange_session_chunk(
        self, session: ProjectionSession, op: SessionOp[M], chunk: SessionChunk | FeaturesChunk
    ) -> Exchange[M]:
        """One chunk of a session call (``op``: logits or features): the server's answer."""
        path = self._api(f"/sessions/{session.id}/{op.name}")
        return (yield from self._exchange("POST", path, chunk.body, op.answer, chunk.sequences))

    def _exchange_session_call(
        self, session: ProjectionSession, op: SessionOp[M], chunk: SessionChunk | FeaturesChunk
    ) -> Exchange[M]:
        """One chunk of a session call, sent alone; a session the server lost is reopened
        from its recipe once and the chunk sent again (the sync client's way)."""
        try:
            return (yield from self._exchange_session_chunk(session, op, chunk))
        except Exception as exc:
            if not is_session_gone(exc):
                raise
        yield from self._exchange_open(session, reopening=True)
        return (yield from self._exchange_session_chunk(session, op, chunk))

    def _exchange_close_session(self, session: ProjectionSession) -> Exchange[None]:
        if session.info is None:
            return
        try:
            path = self._api(f"/sessions/{session.id}")
            yield from self._exchange("DELETE", path, None, SessionClosed)
        except Exception as exc:
            if not is_session_gone(exc):
                raise
        session.info = None
