"""The asyncio HTTP client: the same requests as :class:`Client`, sent without blocking."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from functools import partial
from types import TracebackType
from typing import Any

import httpx
import numpy as np
from tenacity import AsyncRetrying
from typing_extensions import Unpack

from bbt.client._base import BaseClient, Batch, Call, Exchange, M, R, Steps
from bbt.client._config import ClientSettings
from bbt.client._fanout import gather_ordered
from bbt.client.features import (
    FeaturesChunk,
    assemble_features,
    plan_session_features,
)
from bbt.client.planning import (
    FloatArray,
    ProjectedPromptMeta,
    PromptMeta,
    PromptPages,
    plan_projected_store,
    plan_prompt_store,
    prompt_path,
    prompts_page_path,
)
from bbt.client.projection_sessions import (
    SESSION_FEATURES,
    SESSION_LOGITS,
    P0Like,
    ProjectionLike,
    ProjectionSession,
    SessionChunk,
    SessionOp,
    SessionOptions,
    is_session_gone,
    new_session,
    plan_session_logits,
)
from bbt.client.score import TextScores, exchange_score
from bbt.protocol import (
    FEATURES_CAPABILITY,
    SCORE_CAPABILITY,
    SESSIONS_CAPABILITY,
    Health,
    ModelInfo,
    ProjectionSpec,
    PromptDeleted,
    PromptList,
    StoredPrompt,
    TokenizeResponse,
)
from bbt.protocol.features import Pooling
from bbt.protocol.shared import PromptTensor

#: Sub-requests of one split call in flight at once when ``max_concurrency`` is not set
#: (argument or ``BBT_MAX_CONCURRENCY``); a server that limits per-request size usually also
#: limits concurrency, so stay polite by default. Only a set value also fans out.
DEFAULT_MAX_CONCURRENCY = 4


class AsyncClient(BaseClient[httpx.AsyncBaseTransport]):
    """The async twin of :class:`bbt.Client`: same arguments, same behaviour, ``await`` it.

    The split sub-requests of one call run concurrently, at most ``max_concurrency`` at a
    time (:data:`DEFAULT_MAX_CONCURRENCY` when unset); results are still reassembled in
    order. A ``max_concurrency`` that is set (argument or ``BBT_MAX_CONCURRENCY``) also
    fans a logits call out into at least that many requests, as :class:`bbt.Client` does.
    ``transport`` takes any ``httpx.AsyncBaseTransport``, e.g. ``httpx.ASGITransport(app=...)``.
    """

    def _connect(
        self, settings: ClientSettings, transport: httpx.AsyncBaseTransport | None
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            auth=self._url_auth,
            transport=transport,
            timeout=self._timeout(),
        )
        # Set explicitly (argument or environment): that many in flight, and fan-out.
        chosen = "max_concurrency" in settings.model_fields_set
        self._max_concurrency = settings.max_concurrency if chosen else DEFAULT_MAX_CONCURRENCY
        #: How retries wait; tests replace it to record the waits instead of sleeping.
        self._sleep: Callable[[float], Awaitable[None]] = asyncio.sleep

    # ---------------------------------------------------------------- sending

    async def _send(self, call: Call) -> Any:
        request = self._build_request(self._http, call.method, call.path, call.body, call.sequences)

        async def sleep(seconds: float) -> None:
            await self._sleep(seconds)

        retrying = AsyncRetrying(sleep=sleep, **self._retry_kwargs())
        return await retrying(self._send_once, request, partial(self._parse, model=call.model))

    async def _send_once(self, request: httpx.Request, parse: Callable[[httpx.Response], R]) -> R:
        self._count_sent(request)
        try:
            response = await self._http.send(request)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        self._count_received(response)
        return parse(response)

    async def _send_batch(self, batch: Batch) -> list[Any]:
        """The batch's requests, at most ``max_concurrency`` in flight; answers in order.

        On the first failure the remaining requests are cancelled and that error is raised.
        """
        if len(batch.calls) == 1:
            return [await self._send(batch.calls[0])]
        return await gather_ordered(self._max_concurrency, [self._send(c) for c in batch.calls])

    async def _run(self, exchange: Exchange[R]) -> R:
        """Drive ``exchange`` to its result, sending each batch it asks for."""
        steps = Steps(exchange)
        while (batch := steps.batch) is not None:
            try:
                answers = await self._send_batch(batch)
            except Exception as exc:
                steps.fail(exc)
            else:
                steps.answer(answers)
        return steps.result  # type: ignore[return-value]  # set when the batches end

    # ---------------------------------------------------------------- API

    async def health(self) -> Health:
        return await self._run(self._exchange("GET", "/healthz", None, Health))

    async def models(self) -> list[ModelInfo]:
        return await self._run(self._exchange_models())

    async def model_info(self) -> ModelInfo:
        return await self._run(self._exchange_model_info())

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
        return await self._run(self._exchange_features(texts, prompts, pooling))

    async def supports_score(self) -> bool:
        """Whether the server answers prompt log-probabilities (protocol 1.6)."""
        return SCORE_CAPABILITY in (await self.model_info()).capabilities

    async def score(self, texts: Sequence[str]) -> TextScores:
        """See :meth:`bbt.Client.score`; sub-requests run concurrently."""
        return await self._run(exchange_score(self, texts))

    async def tokenize(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> TokenizeResponse:
        return await self._run(self._exchange_tokenize(texts, add_special_tokens))

    async def embed(self, token_ids: Sequence[int]) -> FloatArray:
        return await self._run(self._exchange_embed(token_ids))

    async def logits(
        self,
        prompts: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        return await self._run(self._exchange_logits(prompts, texts, candidate_ids))

    # ---------------------------------------------------------------- prompt registry (1.1)

    async def store_prompt(
        self, prompt: np.ndarray[Any, Any], **meta: Unpack[PromptMeta]
    ) -> StoredPrompt:
        """As :meth:`bbt.Client.store_prompt`."""
        return await self._run(self._exchange_store(plan_prompt_store, prompt, **meta))

    async def store_projected_prompt(
        self,
        projection: ProjectionSpec,
        z: np.ndarray[Any, Any],
        **meta: Unpack[ProjectedPromptMeta],
    ) -> StoredPrompt:
        """As :meth:`bbt.Client.store_projected_prompt`."""
        store = self._exchange_store(plan_projected_store, projection, z, **meta)
        return await self._run(store)

    async def list_prompts(self) -> list[StoredPrompt]:
        """As :meth:`bbt.Client.list_prompts`: every page, to the end."""
        return [p async for p in self.iter_prompts()]

    async def iter_prompts(self, page_size: int | None = None) -> AsyncIterator[StoredPrompt]:
        """As :meth:`bbt.Client.iter_prompts`: a page at a time, as the iteration reaches it."""
        pages = PromptPages()
        while pages.more():
            path = prompts_page_path(pages.cursor, page_size)
            for stored in pages.take(
                await self._run(self._exchange("GET", path, None, PromptList))
            ):
                yield stored

    async def get_prompt(self, prompt_id: str) -> StoredPrompt:
        """As :meth:`bbt.Client.get_prompt`."""
        return await self._run(self._exchange("GET", prompt_path(prompt_id), None, StoredPrompt))

    async def fetch_prompt(self, prompt_id: str) -> PromptTensor:
        """As :meth:`bbt.Client.fetch_prompt`."""
        path = prompt_path(prompt_id) + "/tensor"
        return await self._run(self._exchange("GET", path, None, PromptTensor))

    async def delete_prompt(self, prompt_id: str) -> None:
        """As :meth:`bbt.Client.delete_prompt`."""
        await self._run(self._exchange("DELETE", prompt_path(prompt_id), None, PromptDeleted))

    async def prompt_logits(
        self, prompt_id: str, texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> FloatArray:
        """As :meth:`bbt.Client.prompt_logits`; split requests run concurrently."""
        return await self._run(self._exchange_prompt_logits(prompt_id, texts, candidate_ids))

    # ---------------------------------------------------------------- sessions (1.1)

    async def open_session(
        self, projection: ProjectionLike, p0: P0Like = None, **options: Unpack[SessionOptions]
    ) -> ProjectionSession:
        """See :meth:`bbt.Client.open_session`."""
        session = new_session(projection, p0, **options)
        await self._run(self._exchange_open(session, reopening=False))
        return session

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
        responses = await self._session_answers(session, SESSION_LOGITS, chunks)
        return self._logits_result(chunks, responses, len(texts), len(candidate_ids))

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
        answers = await self._session_answers(session, SESSION_FEATURES, chunks)
        return assemble_features(chunks, answers, self._usage)

    async def _session_answers(
        self,
        session: ProjectionSession,
        op: SessionOp[M],
        chunks: Sequence[SessionChunk] | Sequence[FeaturesChunk],
    ) -> list[M]:
        """Each chunk's answer, at most ``max_concurrency`` in flight; a session the server
        lost is reopened once, however many of the chunks found it gone."""
        reopen = asyncio.Lock()
        jobs = [self._session_call(session, op, chunk, reopen) for chunk in chunks]
        return await gather_ordered(self._max_concurrency, jobs)

    async def _session_call(
        self,
        session: ProjectionSession,
        op: SessionOp[M],
        chunk: SessionChunk | FeaturesChunk,
        reopen: asyncio.Lock,
    ) -> M:
        sent_to = session.id
        try:
            return await self._run(self._exchange_session_chunk(session, op, chunk))
        except Exception as exc:
            if not is_session_gone(exc):
                raise
        async with reopen:  # sibling chunks that also found it gone reopen it only once
            if session.id == sent_to:
                await self._run(self._exchange_open(session, reopening=True))
        return await self._run(self._exchange_session_chunk(session, op, chunk))

    async def close_session(self, session: ProjectionSession) -> None:
        """See :meth:`bbt.Client.close_session`."""
        await self._run(self._exchange_close_session(session))

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
