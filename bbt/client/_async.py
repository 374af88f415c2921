"""The asyncio HTTP client: the same requests as :class:`Client`, sent without blocking."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, SecretStr
from tenacity import AsyncRetrying

from bbt.client._base import BaseClient, M
from bbt.client._config import DEFAULT_ENV_FILE, ClientSettings
from bbt.client._fanout import gather_ordered
from bbt.client.features import (
    FeaturesChunk,
    assemble_features,
    plan_features,
    plan_session_features,
)
from bbt.client.planning import (
    FloatArray,
    next_page,
    plan_embed,
    plan_logits,
    plan_projected_store,
    plan_prompt_logits,
    plan_prompt_store,
    plan_tokenize,
    prompt_logits_into,
    prompt_path,
    prompts_page_path,
    select_model,
)
from bbt.client.projection_sessions import (
    ProjectionSession,
    SessionChunk,
    accept_open,
    as_p0,
    as_spec,
    is_session_gone,
    open_request,
    plan_session_logits,
)
from bbt.client.transport import RawBody
from bbt.protocol import (
    FEATURES_CAPABILITY,
    SESSIONS_CAPABILITY,
    DType,
    EmbeddingsResponse,
    FeaturesResponse,
    Health,
    InitialPromptSpec,
    LogitsResponse,
    ModelInfo,
    ModelList,
    ProjectionSpec,
    PromptDeleted,
    PromptList,
    SessionClosed,
    SessionInfo,
    StoredPrompt,
    TokenizeResponse,
)
from bbt.protocol.features import Pooling
from bbt.protocol.projection import ProjectionRecipe

#: Sub-requests of one split call in flight at once when ``max_concurrency`` is not set
#: (argument or ``BBT_MAX_CONCURRENCY``); a server that limits per-request size usually also
#: limits concurrency, so stay polite by default. Only a set value also fans out.
DEFAULT_MAX_CONCURRENCY = 4


class AsyncClient(BaseClient):
    """The async twin of :class:`bbt.Client`: same arguments, same behaviour, ``await`` it.

    The split sub-requests of one call run concurrently, at most ``max_concurrency`` at a
    time (:data:`DEFAULT_MAX_CONCURRENCY` when unset); results are still reassembled in
    order. A ``max_concurrency`` that is set (argument or ``BBT_MAX_CONCURRENCY``) also
    fans a logits call out into at least that many requests, as :class:`bbt.Client` does.
    ``transport`` takes any ``httpx.AsyncBaseTransport``, e.g. ``httpx.ASGITransport(app=...)``.
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
        transport: httpx.AsyncBaseTransport | None = None,
        env_file: str | Path | None = DEFAULT_ENV_FILE,
        max_concurrency: int | None = None,
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
        cls,
        settings: ClientSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> AsyncClient:
        self = cls.__new__(cls)
        self._init(settings, transport, rng)
        return self

    def _init(
        self,
        settings: ClientSettings,
        transport: httpx.AsyncBaseTransport | None,
        rng: random.Random | None,
    ) -> None:
        super().__init__(settings, rng=rng)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=self._url_auth,
            transport=transport,
            timeout=self._timeout(),
        )
        # Set explicitly (argument or environment): that many in flight, and fan-out.
        chosen = "max_concurrency" in settings.model_fields_set
        self._max_concurrency = settings.max_concurrency if chosen else DEFAULT_MAX_CONCURRENCY
        self._fan_out = settings.max_concurrency
        #: How retries wait; tests replace it to record the waits instead of sleeping.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # ---------------------------------------------------------------- sending

    async def _send(
        self,
        method: str,
        path: str,
        body: BaseModel | RawBody | None,
        model: type[M],
        sequences: int = 0,
    ) -> M:
        request = self._build_request(self._http, method, path, body, sequences)

        async def sleep(seconds: float) -> None:
            await self._sleep(seconds)

        retrying = AsyncRetrying(sleep=sleep, **self._retry_kwargs())
        result: M = await retrying(self._send_once, request, model)
        return result

    async def _send_once(self, request: httpx.Request, model: type[M]) -> M:
        self._count_sent(request)
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        self._count_received(response)
        return self._parse(response, model)

    async def _gather(self, jobs: Sequence[Awaitable[M]]) -> list[M]:
        """Run ``jobs`` at most ``max_concurrency`` at a time; results in job order.

        On the first failure the remaining jobs are cancelled and that error is raised.
        """
        return await gather_ordered(self._max_concurrency, jobs)

    # ---------------------------------------------------------------- API

    async def health(self) -> Health:
        return await self._send("GET", "/healthz", None, Health)

    async def models(self) -> list[ModelInfo]:
        return (await self._send("GET", self._api("/models"), None, ModelList)).data

    async def model_info(self) -> ModelInfo:
        if self._info is None:
            self._info = select_model(await self.models(), self._settings.model)
        return self._info

    async def supports_sessions(self) -> bool:
        """Whether the server offers projection sessions (protocol 1.1)."""
        return SESSIONS_CAPABILITY in (await self.model_info()).capabilities

    async def supports_features(self) -> bool:
        """Whether the server answers features (protocol 1.3)."""
        return FEATURES_CAPABILITY in (await self.model_info()).capabilities

    async def features(
        self,
        texts: Sequence[str],
        prompts: np.ndarray[Any, Any] | None = None,
        *,
        pooling: Pooling = "mean",
    ) -> FloatArray:
        """See :meth:`bbt.Client.features`; sub-requests run concurrently."""
        info = await self.model_info()
        chunks = plan_features(info, texts, prompts, pooling, self._settings.dtype, self._fan_out)
        path = self._api("/features")
        answers = await self._gather(
            [self._send("POST", path, c.body, FeaturesResponse, c.sequences) for c in chunks]
        )
        return assemble_features(chunks, answers, self._usage)

    async def tokenize(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> TokenizeResponse:
        requests = plan_tokenize(await self.model_info(), texts, add_special_tokens)
        responses = await self._gather(
            [self._send("POST", self._api("/tokenize"), r, TokenizeResponse) for r in requests]
        )
        return self._tokenize_result(requests, responses)

    async def embed(self, token_ids: Sequence[int]) -> FloatArray:
        info = await self.model_info()
        requests = plan_embed(info, token_ids)
        responses = await self._gather(
            [self._send("POST", self._api("/embeddings"), r, EmbeddingsResponse) for r in requests]
        )
        return self._embed_result(info, requests, [r.embeddings for r in responses])

    async def logits(
        self,
        prompts: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        info = await self.model_info()
        chunks = plan_logits(
            info, prompts, texts, candidate_ids, self._settings.dtype, self._fan_out
        )
        n_prompts, n_texts, n_cand = len(prompts), len(texts), len(candidate_ids)
        responses = await self._gather(
            [
                self._send("POST", self._api("/logits"), c.request, LogitsResponse, c.sequences)
                for c in chunks
            ]
        )
        out = np.empty((n_prompts, n_texts, n_cand), dtype=np.float32)
        for chunk, resp in zip(chunks, responses, strict=True):
            self._logits_into(out, chunk, resp)
        self._usage.calls += n_prompts
        return out

    # ---------------------------------------------------------------- prompt registry (1.1)

    async def store_prompt(
        self,
        prompt: np.ndarray[Any, Any],
        *,
        label: str | None = None,
        recipe: dict[str, Any] | None = None,
    ) -> StoredPrompt:
        """As :meth:`bbt.Client.store_prompt`."""
        req = plan_prompt_store(await self.model_info(), prompt, label, recipe)
        return await self._send("POST", self._api("/prompts"), req, StoredPrompt)

    async def store_projected_prompt(
        self,
        projection: ProjectionSpec,
        z: np.ndarray[Any, Any],
        *,
        p0: InitialPromptSpec | None = None,
        label: str | None = None,
        recipe: dict[str, Any] | None = None,
    ) -> StoredPrompt:
        """As :meth:`bbt.Client.store_projected_prompt`."""
        req = plan_projected_store(await self.model_info(), projection, z, p0, label, recipe)
        return await self._send("POST", self._api("/prompts"), req, StoredPrompt)

    async def list_prompts(self) -> list[StoredPrompt]:
        """As :meth:`bbt.Client.list_prompts`: every page, to the end."""
        return [p async for p in self.iter_prompts()]

    async def iter_prompts(self, page_size: int | None = None) -> AsyncIterator[StoredPrompt]:
        """As :meth:`bbt.Client.iter_prompts`: a page at a time, as the iteration reaches it."""
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            path = prompts_page_path(cursor, page_size)
            page = await self._send("GET", path, None, PromptList)
            for stored in page.data:
                yield stored
            cursor = next_page(page.next_cursor, seen)
            if cursor is None:
                return

    async def get_prompt(self, prompt_id: str) -> StoredPrompt:
        """As :meth:`bbt.Client.get_prompt`."""
        return await self._send("GET", prompt_path(prompt_id), None, StoredPrompt)

    async def delete_prompt(self, prompt_id: str) -> None:
        """As :meth:`bbt.Client.delete_prompt`."""
        await self._send("DELETE", prompt_path(prompt_id), None, PromptDeleted)

    async def prompt_logits(
        self, prompt_id: str, texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> FloatArray:
        """As :meth:`bbt.Client.prompt_logits`; split requests run concurrently."""
        path = prompt_path(prompt_id) + "/logits"
        chunks = plan_prompt_logits(
            await self.model_info(), texts, candidate_ids, self._settings.dtype
        )
        responses = await self._gather(
            [self._send("POST", path, c.request, LogitsResponse, c.b1 - c.b0) for c in chunks]
        )
        out = np.empty((len(texts), len(candidate_ids)), dtype=np.float32)
        for chunk, resp in zip(chunks, responses, strict=True):
            prompt_logits_into(out, chunk, resp, self._usage)
        self._usage.calls += 1
        return out

    # ---------------------------------------------------------------- sessions (1.1)

    async def open_session(
        self,
        projection: ProjectionRecipe | ProjectionSpec,
        p0: InitialPromptSpec | np.ndarray[Any, Any] | None = None,
        *,
        expected_fingerprint: str | None = None,
    ) -> ProjectionSession:
        """See :meth:`bbt.Client.open_session`."""
        session = ProjectionSession(as_spec(projection), as_p0(p0), expected_fingerprint)
        await self._open(session, reopening=False)
        return session

    async def _open(self, session: ProjectionSession, reopening: bool) -> None:
        req = open_request(await self.model_info(), session)
        answer = await self._send("POST", self._api("/sessions"), req, SessionInfo)
        accept_open(session, answer, reopening)

    async def session_logits(
        self,
        session: ProjectionSession,
        z: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        """See :meth:`bbt.Client.session_logits`; sub-requests run concurrently."""
        info = await self.model_info()
        chunks = plan_session_logits(info, session, z, texts, candidate_ids)
        reopen = asyncio.Lock()
        responses = await self._gather([self._session_call(session, c, reopen) for c in chunks])
        n_prompts = chunks[-1].p1
        out = np.empty((n_prompts, len(texts), len(candidate_ids)), dtype=np.float32)
        for chunk, resp in zip(chunks, responses, strict=True):
            self._logits_into(out, chunk, resp)
        self._usage.calls += n_prompts
        return out

    async def session_features(
        self,
        session: ProjectionSession,
        z: np.ndarray[Any, Any],
        texts: Sequence[str],
        *,
        pooling: Pooling = "mean",
    ) -> FloatArray:
        """See :meth:`bbt.Client.session_features`; sub-requests run concurrently."""
        chunks = plan_session_features(await self.model_info(), session, z, texts, pooling)
        reopen = asyncio.Lock()
        answers = await self._gather(
            [self._session_call(session, c, reopen, "features", FeaturesResponse) for c in chunks]
        )
        return assemble_features(chunks, answers, self._usage)

    async def _session_call(
        self,
        session: ProjectionSession,
        chunk: SessionChunk | FeaturesChunk,
        reopen: asyncio.Lock,
        op: str = "logits",
        answer: type[BaseModel] = LogitsResponse,
    ) -> Any:
        async def send() -> Any:
            path = self._api(f"/sessions/{session.id}/{op}")
            return await self._send("POST", path, chunk.body, answer, chunk.sequences)

        sent_to = session.id
        try:
            return await send()
        except Exception as exc:
            if not is_session_gone(exc):
                raise
        async with reopen:  # sibling chunks that also found it gone reopen it only once
            if session.id == sent_to:
                await self._open(session, reopening=True)
        return await send()

    async def close_session(self, session: ProjectionSession) -> None:
        """See :meth:`bbt.Client.close_session`."""
        if session.info is None:
            return
        try:
            await self._send("DELETE", self._api(f"/sessions/{session.id}"), None, SessionClosed)
        except Exception as exc:
            if not is_session_gone(exc):
                raise
        session.info = None

    # ---------------------------------------------------------------- lifetime

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
