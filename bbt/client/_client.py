"""The synchronous HTTP client."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import httpx
import numpy as np

from bbt.client._base import BaseClient, Batch, Call, Exchange, R, Steps
from bbt.client._config import ClientSettings
from bbt.client.features import assemble_features, plan_session_features
from bbt.client.planning import (
    FloatArray,
    PromptPages,
    plan_projected_store,
    plan_prompt_store,
    prompt_path,
    prompts_page_path,
)
from bbt.client.projection_sessions import (
    ProjectionSession,
    new_session,
    plan_session_logits,
)
from bbt.client.score import TextScores, exchange_score
from bbt.client.transport import SyncHTTPCore
from bbt.protocol import (
    FEATURES_CAPABILITY,
    SCORE_CAPABILITY,
    SESSIONS_CAPABILITY,
    FeaturesResponse,
    Health,
    InitialPromptSpec,
    LogitsResponse,
    ModelInfo,
    ProjectionSpec,
    PromptDeleted,
    PromptList,
    StoredPrompt,
    TokenizeResponse,
)
from bbt.protocol.features import Pooling
from bbt.protocol.projection import ProjectionRecipe
from bbt.protocol.shared import PromptTensor


class Client(BaseClient[httpx.BaseTransport], SyncHTTPCore):
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

    def supports_features(self) -> bool:
        """Whether the server answers features (protocol 1.3)."""
        return FEATURES_CAPABILITY in self.model_info().capabilities

    def features(
        self,
        texts: Sequence[str],
        prompts: np.ndarray[Any, Any] | None = None,
        *,
        pooling: Pooling = "mean",
    ) -> FloatArray:
        """Feature vectors [P, B, F] of ``texts`` under ``prompts`` [P, n, H] (none: P = 1),
        split over the server's limits like :meth:`logits` (protocol 1.3)."""
        return self._run(self._exchange_features(texts, prompts, pooling))

    def supports_score(self) -> bool:
        """Whether the server answers prompt log-probabilities (protocol 1.6)."""
        return SCORE_CAPABILITY in self.model_info().capabilities

    def score(self, texts: Sequence[str]) -> TextScores:
        """Each text's summed token log-probability and token count under the model (a
        causal LM listing the ``"score"`` capability; protocol 1.6)."""
        return self._run(exchange_score(self, texts))

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        return self._run(self._exchange_tokenize(texts, add_special_tokens))

    def embed(self, token_ids: Sequence[int]) -> FloatArray:
        return self._run(self._exchange_embed(token_ids))

    def logits(
        self,
        prompts: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        return self._run(self._exchange_logits(prompts, texts, candidate_ids))

    # ---------------------------------------------------------------- prompt registry (1.1)

    def store_prompt(
        self,
        prompt: np.ndarray[Any, Any],
        *,
        label: str | None = None,
        recipe: dict[str, Any] | None = None,
    ) -> StoredPrompt:
        """Store a tuned prompt [n, H] in the server's registry; its metadata, id included.

        Storing the same prompt again answers the same id (so a retried store is harmless).
        Needs the ``prompt_registry`` capability (``model_info().capabilities``).
        """
        return self._run(self._exchange_store(plan_prompt_store, prompt, label, recipe))

    def store_projected_prompt(
        self,
        projection: ProjectionSpec,
        z: np.ndarray[Any, Any],
        *,
        p0: InitialPromptSpec | None = None,
        label: str | None = None,
        recipe: dict[str, Any] | None = None,
    ) -> StoredPrompt:
        """Store the prompt ``A z + p0`` that the server computes from ``projection`` (as a
        session does): z (d floats) travels instead of the prompt (n x H)."""
        store = self._exchange_store(plan_projected_store, projection, z, p0, label, recipe)
        return self._run(store)

    def list_prompts(self) -> list[StoredPrompt]:
        """Every prompt this API key stored on the server, oldest first (metadata only);
        follows the server's pages (1.2) to the end."""
        return list(self.iter_prompts())

    def iter_prompts(self, page_size: int | None = None) -> Iterator[StoredPrompt]:
        """This key's prompts, oldest first, fetched a page (``page_size`` prompts; None:
        the server's default) at a time as the iteration reaches it."""
        pages = PromptPages()
        while pages.more():
            path = prompts_page_path(pages.cursor, page_size)
            yield from pages.take(self._run(self._exchange("GET", path, None, PromptList)))

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

    def open_session(
        self,
        projection: ProjectionRecipe | ProjectionSpec,
        p0: InitialPromptSpec | np.ndarray[Any, Any] | None = None,
        *,
        expected_fingerprint: str | None = None,
        layers: Sequence[ProjectionRecipe | ProjectionSpec] | None = None,
        layer_p0: np.ndarray[Any, Any] | None = None,
    ) -> ProjectionSession:
        """Open a projection session: the server rebuilds A from ``projection`` and keeps it
        with p0, so :meth:`session_logits` sends z instead of prompts. Needs a server that
        lists ``"sessions"`` in its capabilities (:meth:`supports_sessions`).

        ``layers`` (protocol 1.5, a server with ``"deep_sessions"``) opens a deep session:
        the projections of layers 1 .. L-1, with ``layer_p0`` [L-1, n, H] (default 0); z is
        then [P, L * d] (see :mod:`bbt.protocol.deep_sessions`)."""
        session = new_session(projection, p0, expected_fingerprint, layers, layer_p0)
        self._run(self._exchange_open(session, reopening=False))
        return session

    def session_logits(
        self,
        session: ProjectionSession,
        z: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        """Logits [P, B, C] of the prompts A z + p0 for z [P, d], projected by the server.

        A session the server no longer has (expired, evicted, a restart) is reopened from
        its recipe and the request sent once more."""
        chunks = plan_session_logits(self.model_info(), session, z, texts, candidate_ids)
        call = partial(self._exchange_session_call, session, op="logits", answer=LogitsResponse)
        responses = [self._run(call(c)) for c in chunks]
        return self._logits_result(chunks, responses, len(texts), len(candidate_ids))

    def session_features(
        self,
        session: ProjectionSession,
        z: np.ndarray[Any, Any],
        texts: Sequence[str],
        *,
        pooling: Pooling = "mean",
    ) -> FloatArray:
        """Feature vectors [P, B, F] under the prompts A z + p0 for z [P, d] (1.3)."""
        chunks = plan_session_features(self.model_info(), session, z, texts, pooling)
        call = partial(self._exchange_session_call, session, op="features", answer=FeaturesResponse)
        answers = [self._run(call(c)) for c in chunks]
        return assemble_features(chunks, answers, self._usage)

    def close_session(self, session: ProjectionSession) -> None:
        """Close the session on the server (a session already gone is fine)."""
        self._run(self._exchange_close_session(session))
