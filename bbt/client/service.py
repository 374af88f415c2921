"""What the tuner needs from a model service, whatever carries the calls.

:class:`bbt.Client` (HTTP), and :class:`bbt.client.LocalClient` (a backend in the same
process, no HTTP) both satisfy :class:`Service`; the tuner depends on nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from bbt.client.transport import UsageStats
from bbt.protocol import (
    ModelInfo,
    StoredPrompt,
    TokenizeResponse,
)

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from bbt.client.planning import PromptMeta
    from bbt.client.projection_sessions import (
        P0Like,
        ProjectionLike,
        ProjectionSession,
        SessionOptions,
    )
    from bbt.client.score import TextScores


__all__ = [
    "FeatureService",
    "PromptStore",
    "ScoreService",
    "Service",
    "SessionService",
    "UsageStats",
    "offers_features",
    "offers_prompt_registry",
    "offers_score",
]


@runtime_checkable
class Service(Protocol):
    """A masked LM reachable through protocol v1 (or an in-process stand-in for one)."""

    @property
    def usage(self) -> UsageStats: ...

    def model_info(self) -> ModelInfo:
        """Discovery data of the model in use (cached after the first call)."""
        ...

    def tokenize(
        self, texts: Sequence[str], add_special_tokens: bool = False
    ) -> TokenizeResponse: ...

    def embed(self, token_ids: Sequence[int]) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Input embeddings, shape [len(token_ids), H]."""
        ...

    def logits(
        self,
        prompts: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Logits [P, B, C] for prompts [P, n, H]; work above the server's limits is split
        into several requests and reassembled in order."""
        ...


@runtime_checkable
class PromptStore(Protocol):
    """A service that can keep tuned prompts and score texts against them by id (protocol
    1.1's prompt registry). Having the methods is not enough: the model must also list the
    ``"prompt_registry"`` capability (:func:`offers_prompt_registry`)."""

    def model_info(self) -> ModelInfo: ...

    def store_prompt(
        self, prompt: np.ndarray[Any, Any], **meta: Unpack[PromptMeta]
    ) -> StoredPrompt: ...

    def get_prompt(self, prompt_id: str) -> StoredPrompt: ...

    def list_prompts(self) -> list[StoredPrompt]: ...

    def delete_prompt(self, prompt_id: str) -> None: ...

    def prompt_logits(
        self, prompt_id: str, texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Logits [B, C] of ``texts`` under the stored prompt."""
        ...


def offers_prompt_registry(service: object) -> bool:
    """Whether ``service`` has the registry calls *and* its model lists the capability."""
    from bbt.protocol import PROMPT_REGISTRY_CAPABILITY

    if not isinstance(service, PromptStore):
        return False
    capabilities = getattr(service.model_info(), "capabilities", None) or ()
    return PROMPT_REGISTRY_CAPABILITY in capabilities


@runtime_checkable
class FeatureService(Service, Protocol):
    """A :class:`Service` that can also answer feature vectors under a prompt (protocol
    1.3): what a probe is fitted on. ``Client``, ``AsyncClient`` (with ``await``) and
    ``LocalClient`` have these members; the model must also list the ``"features"``
    capability, which :meth:`supports_features` asks (:func:`offers_features`).
    """

    def supports_features(self) -> bool: ...

    def features(
        self,
        texts: Sequence[str],
        prompts: np.ndarray[Any, Any] | None = None,
        *,
        pooling: Literal["mean", "mask"] = "mean",
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Features [P, B, F] of ``texts`` under ``prompts`` [P, n, H] (none: P = 1), split
        over the server's limits like :meth:`Service.logits`; ``calls`` counts P."""
        ...


def offers_features(service: object) -> bool:
    """Whether ``service`` has the features calls *and* its model lists the capability."""
    return isinstance(service, FeatureService) and service.supports_features()


@runtime_checkable
class ScoreService(Service, Protocol):
    """A :class:`Service` that can also answer prompt log-probabilities (protocol 1.6):
    each text's summed token log-probability under a causal LM. ``Client``,
    ``AsyncClient`` (with ``await``) and ``LocalClient`` have these members; the model must
    also list the ``"score"`` capability, which :meth:`supports_score` asks
    (:func:`offers_score`)."""

    def supports_score(self) -> bool: ...

    def score(self, texts: Sequence[str]) -> TextScores:
        """Each text's log-probability and token count; ``calls`` counts 1."""
        ...


def offers_score(service: object) -> bool:
    """Whether ``service`` has the score call *and* its model lists the capability."""
    return isinstance(service, ScoreService) and service.supports_score()


@runtime_checkable
class SessionService(Service, Protocol):
    """A :class:`Service` that can also host projection sessions (protocol 1.1).

    Implementing the methods is not enough to use them: the server behind must offer
    sessions too, which :meth:`supports_sessions` asks (``"sessions"`` in the model's
    capabilities).
    """

    def supports_sessions(self) -> bool: ...

    def open_session(
        self, projection: ProjectionLike, p0: P0Like = None, **options: Unpack[SessionOptions]
    ) -> ProjectionSession:
        """Have the service build A (and keep p0) so that calls send z, not prompts."""
        ...

    def session_logits(
        self,
        session: ProjectionSession,
        z: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        """Logits [P, B, C] of the prompts A z + p0 for z [P, d]; a session the service
        lost is reopened from its recipe and the call retried once."""
        ...

    def close_session(self, session: ProjectionSession) -> None: ...
