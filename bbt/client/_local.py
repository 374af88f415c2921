"""A :class:`Service` over a backend in the same process: no HTTP, same rules.

The tuner and the benchmarks use it to skip the network while keeping everything that
makes results comparable with a remote service: the same pre-flight checks
(``bbt.protocol.check_*``), the same splitting over the model's limits, the same usage
accounting (``requests`` counts backend calls; bytes stay 0) and the same exceptions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np

from bbt.client._sync_calls import P, StorePlan, SyncServiceCalls
from bbt.client.features import FeaturesChunk, assemble_features, plan_features
from bbt.client.planning import (
    FloatArray,
    invalid,
    plan_embed,
    plan_logits,
    plan_prompt_logits,
    plan_tokenize,
    prompt_logits_into,
    prompt_path,
)
from bbt.client.projection_sessions import (
    ProjectionSession,
    SessionChunk,
    accept_open,
    open_request,
)
from bbt.client.score import TextScores, assemble_score, plan_score
from bbt.client.transport import UsageStats
from bbt.errors import BBTError, NotFoundError, PermissionDeniedError, ProtocolError, ServerError
from bbt.protocol import (
    PROTOCOL_VERSION,
    DecodedLogitsRequest,
    ErrorType,
    FeaturesResponse,
    Health,
    LogitsResponse,
    ModelInfo,
    PromptCreateRequest,
    PromptDeleted,
    PromptList,
    PromptLogitsRequest,
    ProtocolViolation,
    ScoreResponse,
    StoredPrompt,
    Tensor,
    TokenizeResponse,
)
from bbt.protocol.backend import Backend
from bbt.protocol.deep_sessions import session_capabilities
from bbt.protocol.features import DecodedFeaturesRequest, Pooling
from bbt.protocol.sessions import SessionHost, SessionLimits, SessionNotFound
from bbt.protocol.shared import PromptTensor

T = TypeVar("T")


class PromptHost(Protocol):
    """The prompt registry's calls, served in this process (what the server's
    ``/v1/prompts`` routes run): :class:`bbt.server.local.LocalPromptHost` is one."""

    def tenant(self, api_key: str | None) -> str: ...
    def create(self, req: PromptCreateRequest, tenant: str) -> tuple[StoredPrompt, bool]: ...
    def list_page(self, tenant: str, limit: str | None, cursor: str | None) -> PromptList: ...
    def get(self, prompt_id: str, tenant: str) -> StoredPrompt: ...
    def delete(self, prompt_id: str, tenant: str) -> PromptDeleted: ...
    def logits(self, prompt_id: str, req: PromptLogitsRequest, tenant: str) -> LogitsResponse: ...
    def tensor(self, prompt_id: str, tenant: str) -> PromptTensor: ...
    def close(self) -> None: ...


#: Makes the prompt host of a backend, on a registry (``None``: its own, in memory).
PromptHostFactory = Callable[[Backend, Any], PromptHost]


class LocalClient(SyncServiceCalls):
    """Serve :class:`bbt.client.Service` calls from ``backend`` directly.

    The prompt registry calls (:meth:`store_prompt` and the rest) work on ``registry``, by
    default a store in memory made on first use; everything stored is the one tenant's.
    They run the server's code, which ``prompt_host`` supplies (a
    :data:`PromptHostFactory`, e.g. ``bbt.server.local.prompt_host``); without one the
    default of :mod:`bbt.inprocess` is loaded on the first registry call, so this class
    imports nothing of the server.
    """

    #: Nothing travels: the tuner's ``sessions="auto"`` projects locally rather than through
    #: a session here (``"on"`` uses the session path, the server's own code).
    in_process = True

    def __init__(
        self,
        backend: Backend,
        *,
        registry: Any = None,
        prompt_host: PromptHostFactory | None = None,
    ) -> None:
        self._backend = backend
        self._usage = UsageStats()
        self._registry = registry
        self._make_prompt_host = prompt_host
        self._prompt_host: PromptHost | None = None
        # What a 1.1 server would advertise for this backend: sessions run in this process
        # with the server's own session code (bbt.protocol.sessions).
        info = backend.info
        self._model_info = info.model_copy(
            update={
                "protocol_version": PROTOCOL_VERSION,
                "capabilities": [*info.capabilities, *session_capabilities(info)],
            }
        )
        self._sessions: SessionHost | None = None

    @property
    def backend(self) -> Backend:
        return self._backend

    def __repr__(self) -> str:
        return f"LocalClient(backend={type(self._backend).__name__}, model={self._info().id!r})"

    def _info(self) -> ModelInfo:
        return self._model_info

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """One backend call, counted, with its failures mapped as the app factory would."""
        self._usage.requests += 1
        try:
            return fn(*args)
        except ProtocolViolation as exc:
            raise invalid(exc) from exc
        except BBTError:
            raise
        except Exception as exc:
            # What a server would answer with a 500: the backend failed, not the caller.
            raise ServerError(
                f"backend failed: {type(exc).__name__}: {exc}",
                status_code=500,
                error_type="server_error",
            ) from exc

    def models(self) -> list[ModelInfo]:
        return [self._info()]

    def model_info(self) -> ModelInfo:
        return self._info()

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        info = self._info()
        ids: list[list[int]] = []
        tokens: list[list[str]] = []
        for req in plan_tokenize(info, texts, add_special_tokens):
            part_ids, part_tokens = self._call(
                self._backend.tokenize, list(req.texts), req.add_special_tokens
            )
            if len(part_ids) != len(req.texts) or len(part_tokens) != len(req.texts):
                raise ProtocolError("backend tokenize returned the wrong number of rows")
            ids.extend(part_ids)
            tokens.extend(part_tokens)
        return TokenizeResponse(model=info.id, ids=ids, tokens=tokens)

    def embed(self, token_ids: Sequence[int]) -> FloatArray:
        info = self._info()
        parts = []
        for req in plan_embed(info, token_ids):
            emb = self._call(self._backend.embed, np.asarray(req.token_ids, dtype=np.int64))
            emb = np.asarray(emb, dtype=np.float32)
            if emb.shape != (len(req.token_ids), info.hidden_size):
                raise ProtocolError(
                    f"backend embeddings have shape {list(emb.shape)}; "
                    f"expected {[len(req.token_ids), info.hidden_size]}"
                )
            parts.append(emb)
        return np.concatenate(parts, axis=0)

    def _logits(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> FloatArray:
        info = self._info()
        # float32: nothing travels, so nothing is gained by rounding prompts to float16.
        chunks = plan_logits(info, prompts, texts, candidate_ids, "float32")
        n_prompts, n_cand = len(prompts), len(candidate_ids)
        out = np.empty((n_prompts, len(texts), n_cand), dtype=np.float32)
        for chunk in chunks:
            self._score_into(out, chunk.p0, chunk.p1, chunk.b0, chunk.b1, chunk.decoded)
        self._usage.calls += n_prompts
        return out

    # ---------------------------------------------------------------- prompt registry

    def _endpoints(self) -> PromptHost:
        if self._prompt_host is None:
            make = self._make_prompt_host
            if make is None:
                # Imported here: the registry (sqlite3) and the server's core are only
                # loaded by a caller that uses them.
                from bbt.inprocess import default_prompt_host

                make = default_prompt_host
            self._prompt_host = make(self._backend, self._registry)
        return self._prompt_host

    def _registry_call(self, fn: Callable[..., T], *args: Any) -> T:
        """A registry call with its refusals mapped as an HTTP client would see them."""
        try:
            return self._call(fn, *args)
        except BBTError as exc:
            cause = exc.__cause__
            if isinstance(cause, ProtocolViolation):
                if cause.error_type is ErrorType.not_found:
                    raise NotFoundError(
                        cause.message, status_code=404, error_type="not_found", field=cause.field
                    ) from cause
                if cause.error_type is ErrorType.permission:
                    raise PermissionDeniedError(
                        cause.message, status_code=403, error_type="permission", field=cause.field
                    ) from cause
                if cause.error_type is ErrorType.unavailable:
                    # The registry's storage failed: the 503 a server would answer.
                    raise ServerError(
                        cause.message, status_code=503, error_type="unavailable"
                    ) from cause
            raise

    def _store(self, plan: StorePlan[P], *args: P.args, **kwargs: P.kwargs) -> StoredPrompt:
        req = plan(self._info(), *args, **kwargs)
        ep = self._endpoints()
        stored, _ = self._registry_call(ep.create, req, ep.tenant(None))
        return stored

    def _prompt_page(self, cursor: str | None, page_size: int | None) -> PromptList:
        ep = self._endpoints()
        limit = None if page_size is None else str(page_size)
        return self._registry_call(ep.list_page, ep.tenant(None), limit, cursor)

    def get_prompt(self, prompt_id: str) -> StoredPrompt:
        """As :meth:`bbt.Client.get_prompt`."""
        prompt_path(prompt_id)
        ep = self._endpoints()
        return self._registry_call(ep.get, prompt_id, ep.tenant(None))

    def delete_prompt(self, prompt_id: str) -> None:
        """As :meth:`bbt.Client.delete_prompt`."""
        prompt_path(prompt_id)
        ep = self._endpoints()
        self._registry_call(ep.delete, prompt_id, ep.tenant(None))

    def fetch_prompt(self, prompt_id: str) -> PromptTensor:
        """As :meth:`bbt.Client.fetch_prompt`."""
        prompt_path(prompt_id)
        ep = self._endpoints()
        return self._registry_call(ep.tensor, prompt_id, ep.tenant(None))

    def prompt_logits(
        self, prompt_id: str, texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> FloatArray:
        """As :meth:`bbt.Client.prompt_logits`."""
        prompt_path(prompt_id)
        chunks = plan_prompt_logits(self._info(), texts, candidate_ids, "float32")
        ep = self._endpoints()
        out = np.empty((len(texts), len(candidate_ids)), dtype=np.float32)
        for chunk in chunks:
            resp = self._registry_call(ep.logits, prompt_id, chunk.request, ep.tenant(None))
            prompt_logits_into(out, chunk, resp, self._usage)
        self._usage.calls += 1
        return out

    def _score_into(
        self,
        out: FloatArray,
        p0: int,
        p1: int,
        b0: int,
        b1: int,
        d: DecodedLogitsRequest,
        rows_sent: int | None = None,
    ) -> None:
        logits, usage = self._call(self._backend.logits, d.prompts, d.texts, d.candidate_ids)
        shape = (p1 - p0 if rows_sent is None else rows_sent, b1 - b0, out.shape[2])
        logits = np.asarray(logits)
        if logits.shape != shape:
            raise ProtocolError(
                f"backend logits have shape {list(logits.shape)}; expected {list(shape)}"
            )
        out[p0:p1, b0:b1] = logits[: p1 - p0]
        self._usage.sequences += usage.sequences
        self._usage.tokens += usage.tokens

    # ---------------------------------------------------------------- sessions (1.1)

    def supports_sessions(self) -> bool:
        return True

    def _host(self) -> SessionHost:
        if self._sessions is None:
            backend = self._backend
            self._sessions = SessionHost(
                self._info(),
                backend.embed,
                backend.tokenize,
                # One caller, no tenants: any number of sessions, and the least recently
                # used ones make room at once when memory runs short (they reopen).
                SessionLimits(max_per_key=2**31, evict_after_s=0.0),
                projector=getattr(backend, "session_projector", None),
            )
        return self._sessions

    def _open(self, session: ProjectionSession, reopening: bool) -> None:
        req = open_request(self._info(), session)
        accept_open(session, self._call(self._host().open, "", req), reopening)

    def _session_logits(
        self, session: ProjectionSession, chunks: list[SessionChunk], n_texts: int, n_cand: int
    ) -> FloatArray:
        n_prompts = chunks[-1].p1
        out = np.empty((n_prompts, n_texts, n_cand), dtype=np.float32)
        host = self._host()
        for chunk in chunks:
            decoded = self._session_decoded(session, host.decode, chunk.request, chunk.raw)
            self._score_into(out, chunk.p0, chunk.p1, chunk.b0, chunk.b1, decoded, chunk.rows_sent)
        self._usage.calls += n_prompts
        return out

    def _session_decoded(
        self, session: ProjectionSession, decode: Callable[..., T], request: Any, raw: bytes
    ) -> T:
        """``decode`` (a session host's) of one chunk; a session the host lost is reopened
        from its recipe and the chunk decoded once more."""
        try:
            return decode("", session.id, request, raw)
        except SessionNotFound:
            self._open(session, reopening=True)
            return self._call(decode, "", session.id, request, raw)
        except ProtocolViolation as exc:
            raise invalid(exc) from exc

    # ---------------------------------------------------------------- score (1.6)

    def score(self, texts: Sequence[str]) -> TextScores:
        """See :meth:`bbt.Client.score`."""
        reqs = plan_score(self._info(), texts)
        answers = [
            ScoreResponse(model=self._info().id, logprobs=s, token_counts=c, usage=u)
            for s, c, u in (self._call(self._backend.score, list(r.texts)) for r in reqs)
        ]
        return assemble_score(reqs, answers, self._usage)

    # ---------------------------------------------------------------- features (1.3)

    def _features(
        self, texts: Sequence[str], prompts: np.ndarray[Any, Any] | None, pooling: Pooling
    ) -> FloatArray:
        # float32 prompts: nothing travels.
        chunks = plan_features(self._info(), texts, prompts, pooling)
        answers = [self._features_answer(c.decoded) for c in chunks if c.decoded is not None]
        return assemble_features(chunks, answers, self._usage)

    def _session_features(
        self, session: ProjectionSession, chunks: list[FeaturesChunk]
    ) -> list[FeaturesResponse]:
        decode = self._host().decode_features
        return [
            self._features_answer(self._session_decoded(session, decode, c.request, c.raw))
            for c in chunks
        ]

    def _features_answer(self, d: DecodedFeaturesRequest) -> FeaturesResponse:
        out, usage = self._call(self._backend.features, d.prompts, d.texts, d.pooling)
        tensor = Tensor.from_numpy(np.asarray(out, dtype=np.float32))
        return FeaturesResponse(
            model=self._info().id, features=tensor, pooling=d.pooling, usage=usage
        )

    def close_session(self, session: ProjectionSession) -> None:
        if session.info is None:
            return
        with contextlib.suppress(SessionNotFound):
            self._host().close("", session.id)
        session.info = None

    def health(self) -> Health:
        return Health(models=[self._info().id])

    def close(self) -> None:
        self._backend.close()
        if self._prompt_host is not None:
            self._prompt_host.close()

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
