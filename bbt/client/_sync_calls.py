"""The blocking :class:`~bbt.client.Service` calls, written once for every sync client.

:class:`bbt.Client` (over HTTP) and :class:`bbt.client.LocalClient` (a backend in this
process) offer the same calls with the same arguments and the same checks; they differ
only in how one planned piece of work is carried out. :class:`SyncServiceCalls` holds the
public methods whose signatures, documentation or planning the two share; each client
supplies the primitives they call (``_logits``, ``_features``, ``_store``,
``_prompt_page``, ``_open``, ``_session_logits``, ``_session_features``), which do the
I/O its way. Calls with nothing to share (``tokenize``, ``embed``, ``score``, the prompt
registry's ``get_prompt`` and the like) each client writes itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec

import numpy as np
from typing_extensions import Unpack

from bbt.client.features import FeaturesChunk, assemble_features, plan_session_features
from bbt.client.planning import (
    FloatArray,
    ProjectedPromptMeta,
    PromptMeta,
    PromptPages,
    plan_projected_store,
    plan_prompt_store,
)
from bbt.client.projection_sessions import (
    P0Like,
    ProjectionLike,
    ProjectionSession,
    SessionChunk,
    SessionOptions,
    new_session,
    plan_session_logits,
)
from bbt.client.transport import UsageStats
from bbt.protocol import (
    FEATURES_CAPABILITY,
    SCORE_CAPABILITY,
    FeaturesResponse,
    ModelInfo,
    ProjectionSpec,
    PromptCreateRequest,
    PromptList,
    StoredPrompt,
)
from bbt.protocol.features import Pooling

P = ParamSpec("P")

#: How a store request is planned from the model's info (a prompt, or A z + p0).
StorePlan = Callable[Concatenate[ModelInfo, P], PromptCreateRequest]


class SyncServiceCalls:
    """The sync service API over a client's primitives (see the module's doc)."""

    _usage: UsageStats

    @property
    def usage(self) -> UsageStats:
        """Live running totals; take ``usage.copy()`` for a snapshot."""
        return self._usage

    def model_info(self) -> ModelInfo:
        raise NotImplementedError

    # ---------------------------------------------------------------- primitives

    def _logits(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> FloatArray:
        """The logits [P, B, C] of a :meth:`logits` call; counted."""
        raise NotImplementedError

    def _features(
        self, texts: Sequence[str], prompts: np.ndarray[Any, Any] | None, pooling: Pooling
    ) -> FloatArray:
        """The features [P, B, F] of a :meth:`features` call; counted."""
        raise NotImplementedError

    def _store(self, plan: StorePlan[P], *args: P.args, **kwargs: P.kwargs) -> StoredPrompt:
        """Store the prompt ``plan(info, *args)`` describes; the stored prompt's metadata."""
        raise NotImplementedError

    def _prompt_page(self, cursor: str | None, page_size: int | None) -> PromptList:
        """One page of this key's stored prompts, from ``cursor`` (None: the first)."""
        raise NotImplementedError

    def _open(self, session: ProjectionSession, reopening: bool) -> None:
        """Open ``session`` on the service (again, when ``reopening`` one it lost)."""
        raise NotImplementedError

    def _session_logits(
        self, session: ProjectionSession, chunks: list[SessionChunk], n_texts: int, n_cand: int
    ) -> FloatArray:
        """The logits [P, B, C] of a session call planned as ``chunks``; counted."""
        raise NotImplementedError

    def _session_features(
        self, session: ProjectionSession, chunks: list[FeaturesChunk]
    ) -> list[FeaturesResponse]:
        """The answers to a session features call planned as ``chunks``, in order."""
        raise NotImplementedError

    # ---------------------------------------------------------------- calls

    def logits(
        self,
        prompts: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        """Logits [P, B, C] of ``texts`` under ``prompts`` [P, n, H], for the
        ``candidate_ids``; work above the server's limits is split into several requests
        and reassembled in order. ``usage.calls`` counts P."""
        return self._logits(prompts, texts, candidate_ids)

    def features(
        self,
        texts: Sequence[str],
        prompts: np.ndarray[Any, Any] | None = None,
        *,
        pooling: Pooling = "mean",
    ) -> FloatArray:
        """Feature vectors [P, B, F] of ``texts`` under ``prompts`` [P, n, H] (none: P = 1),
        split over the server's limits like :meth:`logits` (protocol 1.3)."""
        return self._features(texts, prompts, pooling)

    # ---------------------------------------------------------------- capabilities

    def supports_features(self) -> bool:
        """Whether the server answers features (protocol 1.3)."""
        return FEATURES_CAPABILITY in self.model_info().capabilities

    def supports_score(self) -> bool:
        """Whether the server answers prompt log-probabilities (protocol 1.6)."""
        return SCORE_CAPABILITY in self.model_info().capabilities

    # ---------------------------------------------------------------- prompt registry (1.1)

    def store_prompt(
        self, prompt: np.ndarray[Any, Any], **meta: Unpack[PromptMeta]
    ) -> StoredPrompt:
        """Store a tuned prompt [n, H] in the server's registry; its metadata, id included.

        Storing the same prompt again answers the same id (so a retried store is harmless).
        Needs the ``prompt_registry`` capability (``model_info().capabilities``).
        """
        return self._store(plan_prompt_store, prompt, **meta)

    def store_projected_prompt(
        self,
        projection: ProjectionSpec,
        z: np.ndarray[Any, Any],
        **meta: Unpack[ProjectedPromptMeta],
    ) -> StoredPrompt:
        """Store the prompt ``A z + p0`` that the server computes from ``projection`` (as a
        session does): z (d floats) travels instead of the prompt (n x H); ``p0``, ``label``
        and ``recipe`` as :class:`~bbt.client.planning.ProjectedPromptMeta` says."""
        return self._store(plan_projected_store, projection, z, **meta)

    def list_prompts(self) -> list[StoredPrompt]:
        """Every prompt this API key stored on the server, oldest first (metadata only);
        follows the server's pages (1.2) to the end."""
        return list(self.iter_prompts())

    def iter_prompts(self, page_size: int | None = None) -> Iterator[StoredPrompt]:
        """This key's prompts, oldest first, fetched a page (``page_size`` prompts; None:
        the server's default) at a time as the iteration reaches it."""
        pages = PromptPages()
        while pages.more():
            yield from pages.take(self._prompt_page(pages.cursor, page_size))

    # ---------------------------------------------------------------- sessions (1.1)

    def open_session(
        self, projection: ProjectionLike, p0: P0Like = None, **options: Unpack[SessionOptions]
    ) -> ProjectionSession:
        """Open a projection session: the server rebuilds A from ``projection`` and keeps it
        with p0, so :meth:`session_logits` sends z instead of prompts. Needs a server that
        lists ``"sessions"`` in its capabilities (:meth:`supports_sessions`).

        ``layers`` (protocol 1.5, a server with ``"deep_sessions"``) opens a deep session:
        the projections of layers 1 .. L-1, with ``layer_p0`` [L-1, n, H] (default 0); z is
        then [P, L * d] (see :mod:`bbt.protocol.deep_sessions`)."""
        session = new_session(projection, p0, **options)
        self._open(session, reopening=False)
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
        return self._session_logits(session, chunks, len(texts), len(candidate_ids))

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
        return assemble_features(chunks, self._session_features(session, chunks), self.usage)
