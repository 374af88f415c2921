"""The synchronous HTTP client."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from pydantic import BaseModel, SecretStr

from bbt.client._base import BaseClient, M
from bbt.client._config import DEFAULT_ENV_FILE, ClientSettings
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
from bbt.client.transport import RawBody, SyncHTTPCore
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


class Client(BaseClient, SyncHTTPCore):
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
        transport: httpx.BaseTransport | None = None,
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
        cls,
        settings: ClientSettings,
        *,
        transport: httpx.BaseTransport | None = None,
        rng: random.Random | None = None,
    ) -> Client:
        self = cls.__new__(cls)
        self._init(settings, transport, rng)
        return self

    def _init(
        self,
        settings: ClientSettings,
        transport: httpx.BaseTransport | None,
        rng: random.Random | None,
    ) -> None:
        super().__init__(settings, rng=rng)
        self._open_http(
            self.base_url,
            auth=self._url_auth,
            transport=transport,
            width=settings.max_concurrency,
        )

    # ---------------------------------------------------------------- sending

    def _send(
        self,
        method: str,
        path: str,
        body: BaseModel | RawBody | None,
        model: type[M],
        sequences: int = 0,
    ) -> M:
        request = self._build_request(self._http, method, path, body, sequences)
        return self._send_request(request, partial(self._parse, model=model))

    # ---------------------------------------------------------------- API

    def health(self) -> Health:
        return self._send("GET", "/healthz", None, Health)

    def models(self) -> list[ModelInfo]:
        return self._send("GET", self._api("/models"), None, ModelList).data

    def model_info(self) -> ModelInfo:
        if self._info is None:
            self._info = select_model(self.models(), self._settings.model)
        return self._info

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
        info, width = self.model_info(), self._settings.max_concurrency
        chunks = plan_features(info, texts, prompts, pooling, self._settings.dtype, width)
        send = partial(self._send, "POST", self._api("/features"))
        answers = self._fan_out(
            [partial(send, c.body, FeaturesResponse, c.sequences) for c in chunks]
        )
        return assemble_features(chunks, answers, self._usage)

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        requests = plan_tokenize(self.model_info(), texts, add_special_tokens)
        responses = [
            self._send("POST", self._api("/tokenize"), r, TokenizeResponse) for r in requests
        ]
        return self._tokenize_result(requests, responses)

    def embed(self, token_ids: Sequence[int]) -> FloatArray:
        info = self.model_info()
        requests = plan_embed(info, token_ids)
        tensors = [
            self._send("POST", self._api("/embeddings"), r, EmbeddingsResponse).embeddings
            for r in requests
        ]
        return self._embed_result(info, requests, tensors)

    def logits(
        self,
        prompts: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        info = self.model_info()
        width = self._settings.max_concurrency
        chunks = plan_logits(info, prompts, texts, candidate_ids, self._settings.dtype, width)
        n_prompts, n_texts, n_cand = len(prompts), len(texts), len(candidate_ids)
        out = np.empty((n_prompts, n_texts, n_cand), dtype=np.float32)
        send = partial(self._send, "POST", self._api("/logits"))
        responses = self._fan_out(
            [partial(send, c.request, LogitsResponse, c.sequences) for c in chunks]
        )
        for chunk, resp in zip(chunks, responses, strict=True):
            self._logits_into(out, chunk, resp)
        self._usage.calls += n_prompts
        return out

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
        req = plan_prompt_store(self.model_info(), prompt, label, recipe)
        return self._send("POST", self._api("/prompts"), req, StoredPrompt)

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
        req = plan_projected_store(self.model_info(), projection, z, p0, label, recipe)
        return self._send("POST", self._api("/prompts"), req, StoredPrompt)

    def list_prompts(self) -> list[StoredPrompt]:
        """Every prompt this API key stored on the server, oldest first (metadata only);
        follows the server's pages (1.2) to the end."""
        return list(self.iter_prompts())

    def iter_prompts(self, page_size: int | None = None) -> Iterator[StoredPrompt]:
        """This key's prompts, oldest first, fetched a page (``page_size`` prompts; None:
        the server's default) at a time as the iteration reaches it."""
        cursor: str | None = None
        seen: set[str] = set()
        while True:
            path = prompts_page_path(cursor, page_size)
            page = self._send("GET", path, None, PromptList)
            yield from page.data
            cursor = next_page(page.next_cursor, seen)
            if cursor is None:
                return

    def get_prompt(self, prompt_id: str) -> StoredPrompt:
        """A stored prompt's metadata; :class:`~bbt.errors.NotFoundError` when it is gone
        or was stored with another API key."""
        return self._send("GET", prompt_path(prompt_id), None, StoredPrompt)

    def delete_prompt(self, prompt_id: str) -> None:
        """Delete a stored prompt; :class:`~bbt.errors.NotFoundError` when there is none."""
        self._send("DELETE", prompt_path(prompt_id), None, PromptDeleted)

    def prompt_logits(
        self, prompt_id: str, texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> FloatArray:
        """Logits [B, C] of ``texts`` under a stored prompt: only the texts are uploaded."""
        path = prompt_path(prompt_id) + "/logits"
        chunks = plan_prompt_logits(self.model_info(), texts, candidate_ids, self._settings.dtype)
        out = np.empty((len(texts), len(candidate_ids)), dtype=np.float32)
        for chunk in chunks:
            resp = self._send("POST", path, chunk.request, LogitsResponse, chunk.b1 - chunk.b0)
            prompt_logits_into(out, chunk, resp, self._usage)
        self._usage.calls += 1
        return out

    # ---------------------------------------------------------------- sessions (1.1)

    def open_session(
        self,
        projection: ProjectionRecipe | ProjectionSpec,
        p0: InitialPromptSpec | np.ndarray[Any, Any] | None = None,
        *,
        expected_fingerprint: str | None = None,
    ) -> ProjectionSession:
        """Open a projection session: the server rebuilds A from ``projection`` and keeps it
        with p0, so :meth:`session_logits` sends z instead of prompts. Needs a server that
        lists ``"sessions"`` in its capabilities (:meth:`supports_sessions`)."""
        session = ProjectionSession(as_spec(projection), as_p0(p0), expected_fingerprint)
        self._open(session, reopening=False)
        return session

    def _open(self, session: ProjectionSession, reopening: bool) -> None:
        req = open_request(self.model_info(), session)
        answer = self._send("POST", self._api("/sessions"), req, SessionInfo)
        accept_open(session, answer, reopening)

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
        info = self.model_info()
        chunks = plan_session_logits(info, session, z, texts, candidate_ids)
        n_prompts = chunks[-1].p1
        out = np.empty((n_prompts, len(texts), len(candidate_ids)), dtype=np.float32)
        for chunk in chunks:
            self._logits_into(out, chunk, self._session_call(session, chunk))
        self._usage.calls += n_prompts
        return out

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
        answers = [self._session_call(session, c, "features", FeaturesResponse) for c in chunks]
        return assemble_features(chunks, answers, self._usage)

    def _session_call(
        self,
        session: ProjectionSession,
        chunk: SessionChunk | FeaturesChunk,
        op: str = "logits",
        answer: type[BaseModel] = LogitsResponse,
    ) -> Any:
        def send() -> Any:
            path = self._api(f"/sessions/{session.id}/{op}")
            return self._send("POST", path, chunk.body, answer, chunk.sequences)

        try:
            return send()
        except Exception as exc:
            if not is_session_gone(exc):
                raise
        self._open(session, reopening=True)
        return send()

    def close_session(self, session: ProjectionSession) -> None:
        """Close the session on the server (a session already gone is fine)."""
        if session.info is None:
            return
        try:
            self._send("DELETE", self._api(f"/sessions/{session.id}"), None, SessionClosed)
        except Exception as exc:
            if not is_session_gone(exc):
                raise
        session.info = None
