"""The synchronous HTTP client."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import httpx
import numpy as np

from bbt.client._base import BaseClient, Batch, Call, Exchange, R, Steps
from bbt.client._config import ClientSettings
from bbt.client._sync_calls import P, StorePlan, SyncServiceCalls
from bbt.client.features import FeaturesChunk
from bbt.client.planning import FloatArray, prompt_path, prompts_page_path
from bbt.client.projection_sessions import (
    SESSION_FEATURES,
    SESSION_LOGITS,
    ProjectionSession,
    SessionChunk,
)
from bbt.client.score import TextScores, exchange_score
from bbt.client.transport import SyncHTTPCore
from bbt.protocol import (
    SESSIONS_CAPABILITY,
    FeaturesResponse,
    Health,
    ModelInfo,
    PromptDeleted,
    PromptList,
    StoredPrompt,
    TokenizeResponse,
)
from bbt.protocol.features import Pooling
from bbt.protocol.shared import PromptTensor


class Client(BaseClient[httpx.BaseTransport], SyncHTTPCore, SyncServiceCalls):
    """A blocking client for a protocol v1 service; satisfies :class:`bbt.client.Service`.

    Arguments left as ``None`` come from ``BBT_*`` environment variables, then from
    ``env_file`` (``None`` reads no file), then from the defaults in
    :class:`ClientSettings`. ``transport`` replaces the network, e.g. with
    ``httpx.MockTransport`` in tests.

    Timeouts: ``connect_timeout`` to open a connection (default 10 s), ``timeout`` for the
    server's answer, plus ``timeout_per_sequence`` for each sequence of a logits request,
    so a large request is not abandoned (and retried behind itself) while it computes.

    Usage: ``requests`` and the byte counters include every attempt, retries too;
    ``calls`` counts candidate prompts per completed :meth:`logits` call.
    """

    def _connect(self, settings: ClientSettings, transport: httpx.BaseTransport | None) -> None:
        self._open_http(
            self.base_url,
            auth=self._url_auth,
            transport=transport,
            width=settings.max_concurrency,
        )

    # ---------------------------------------------------------------- sending

    def _send(self, call: Call) -> Any:
        request = self._build_request(self._http, call.method, call.path, call.body, call.sequences)
        return self._send_request(request, partial(self._parse, model=call.model))

    def _send_batch(self, batch: Batch) -> list[Any]:
        jobs = [partial(self._send, call) for call in batch.calls]
        return self._fan_out(jobs) if batch.fan_out else [job() for job in jobs]

    def _run(self, exchange: Exchange[R]) -> R:
        """Drive ``exchange`` to its result, sending each batch it asks for."""
        steps = Steps(exchange)
        while (batch := steps.batch) is not None:
            try:
                answers = self._send_batch(batch)
            except Exception as exc:
                steps.fail(exc)
            else:
                steps.answer(answers)
        return steps.result  # type: ignore[return-value]  # set when the batches end

    # ---------------------------------------------------------------- API

    def health(self) -> Health:
        return self._run(self._exchange("GET", "/healthz", None, Health))

    def models(self) -> list[ModelInfo]:
        return self._run(self._exchange_models())

    def model_info(self) -> ModelInfo:
        return self._run(self._exchange_model_info())

    def supports_sessions(self) -> bool:
        """Whether the server offers projection sessions (protocol 1.1)."""
        return SESSIONS_CAPABILITY in self.model_info().capabilities

    def _features(
        self, texts: Sequence[str], prompts: np.ndarray[Any, Any] | None, pooling: Pooling
    ) -> FloatArray:
        return self._run(self._exchange_features(texts, prompts, pooling))

    def score(self, texts: Sequence[str]) -> TextScores:
        """Each text's summed token log-probability and token count under the model (a
        causal LM listing the ``"score"`` capability; protocol 1.6)."""
        return self._run(exchange_score(self, texts))

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        return self._run(self._exchange_tokenize(texts, add_special_tokens))

    def embed(self, token_ids: Sequence[int]) -> FloatArray:
        return self._run(self._exchange_embed(token_ids))

    def _logits(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> FloatArray:
        return self._run(self._exchange_logits(prompts, texts, candidate_ids))

    # ---------------------------------------------------------------- prompt registry (1.1)

    def _store(self, plan: StorePlan[P], *args: P.args, **kwargs: P.kwargs) -> StoredPrompt:
        return self._run(self._exchange_store(plan, *args, **kwargs))

    def _prompt_page(self, cursor: str | None, page_size: int | None) -> PromptList:
        path = prompts_page_path(cursor, page_size)
        return self._run(self._exchange("GET", path, None, PromptList))

    def get_prompt(self, prompt_id: str) -> StoredPrompt:
        """A stored prompt's metadata; :class:`~bbt.errors.NotFoundError` when it is gone
        or was stored with another API key."""
        return self._run(self._exchange("GET", prompt_path(prompt_id), None, StoredPrompt))

    def delete_prompt(self, prompt_id: str) -> None:
        """Delete a stored prompt; :class:`~bbt.errors.NotFoundError` when there is none."""
        self._run(self._exchange("DELETE", prompt_path(prompt_id), None, PromptDeleted))

    def fetch_prompt(self, prompt_id: str) -> PromptTensor:
        """A stored prompt's values and metadata, this key's or one the operator shares
        (protocol 1.4: the model lists ``"shared_prompts"``)."""
        path = prompt_path(prompt_id) + "/tensor"
        return self._run(self._exchange("GET", path, None, PromptTensor))

    def prompt_logits(
        self, prompt_id: str, texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> FloatArray:
        """Logits [B, C] of ``texts`` under a stored prompt: only the texts are uploaded."""
        return self._run(self._exchange_prompt_logits(prompt_id, texts, candidate_ids))

    # ---------------------------------------------------------------- sessions (1.1)

    def _open(self, session: ProjectionSession, reopening: bool) -> None:
        self._run(self._exchange_open(session, reopening))

    def _session_logits(
        self, session: ProjectionSession, chunks: list[SessionChunk], n_texts: int, n_cand: int
    ) -> FloatArray:
        call = partial(self._exchange_session_call, session, SESSION_LOGITS)
        responses = [self._run(call(c)) for c in chunks]
        return self._logits_result(chunks, responses, n_texts, n_cand)

    def _session_features(
        self, session: ProjectionSession, chunks: list[FeaturesChunk]
    ) -> list[FeaturesResponse]:
        call = partial(self._exchange_session_call, session, SESSION_FEATURES)
        return [self._run(call(c)) for c in chunks]

    def close_session(self, session: ProjectionSession) -> None:
        """Close the session on the server (a session already gone is fine)."""
        self._run(self._exchange_close_session(session))
