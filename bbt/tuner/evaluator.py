"""The evaluator seam: the one place where candidates in z-space become logits.

The optimiser (:mod:`bbt.tuner.optimizer`) works in z-space only; the :class:`Tuner` hands
each population to an :class:`Evaluator` and turns the logits it returns into losses. What
z means on the wire is the evaluator's business:

- :class:`ProjectingEvaluator` (the default, protocol v1): the prompt p = A z + p0 is built
  here, in the client, and sent in full to :meth:`bbt.client.Service.logits`.
- :class:`SessionEvaluator` (protocol 1.1) hands z itself to a server that holds A and p0
  (see :mod:`bbt.tuner.sessions` for why and when);
- deep prompts (BBTv2) map z to one prompt per layer.

So nothing outside an evaluator assumes that a prompt has the shape [P, n, H]: z goes in
(``[P, ...]``, float64, one row per candidate), logits ``[P, B, C]`` (float32) come out.

:func:`make_evaluator` is what the tuner calls to get one; it is the place to choose an
evaluator from the service's capabilities.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from bbt.client import ProjectionSession, Service, SessionService
from bbt.errors import APIStatusError, BBTError, ConfigurationError, ProtocolError
from bbt.tuner.projection import Projection, ProjectionRecipe

F32 = np.ndarray[Any, np.dtype[np.float32]]

log = logging.getLogger("bbt.tuner")

SessionsMode = Literal["auto", "on", "off"]
SESSIONS_MODES: tuple[SessionsMode, ...] = ("auto", "on", "off")

__all__ = [
    "SESSIONS_MODES",
    "Evaluator",
    "EvaluatorFactory",
    "ProjectingEvaluator",
    "SessionEvaluator",
    "SessionsMode",
    "choose_evaluator",
    "make_evaluator",
    "offers_sessions",
]


class Evaluator(ABC):
    """Scores candidates given in z-space on a list of texts."""

    @abstractmethod
    def logits(
        self, z: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> F32:
        """Logits ``[P, B, C]`` (float32) of the P candidates ``z`` (one per row) on the B
        ``texts``, at the verbalizer's ``candidate_ids`` (C of them). Row ``[i, j]`` depends
        only on candidate i and text j. Errors of the service propagate unchanged."""

    @abstractmethod
    def prompts(self, z: np.ndarray[Any, Any]) -> F32:
        """The prompt tensors the candidates ``z`` stand for, one per row, float32: what a
        run saves as its result (``prompt.npy``) and what predictions send."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release what the evaluator holds on the service (e.g. a session)."""


class _LocalProjection(Evaluator):
    """What the evaluators of a projection recipe share: A built here and p0, so that
    :meth:`prompts` (what a run saves) is p = A z + p0 computed locally, whichever way the
    logits are then asked for. ``z`` is ``[P, d]``; prompts are ``[P, n, H]``. (A base of
    its own rather than one evaluator subclassing the other: ``isinstance`` tells the two
    paths apart.)"""

    def __init__(self, service: Service, recipe: ProjectionRecipe, p0: F32) -> None:
        if p0.shape != (recipe.n_tokens, recipe.hidden_size):
            raise ValueError(
                f"p0 has shape {list(p0.shape)}; expected [{recipe.n_tokens}, {recipe.hidden_size}]"
            )
        self.service = service
        self.recipe = recipe
        self.projection = Projection(recipe)
        self.p0: F32 = np.ascontiguousarray(p0, dtype=np.float32)

    def prompts(self, z: np.ndarray[Any, Any]) -> F32:
        return self.projection.project(z, self.p0)


class ProjectingEvaluator(_LocalProjection):
    """p = A z + p0 computed locally, then one :meth:`Service.logits` call per population
    (the service splits it over its limits). ``z`` is ``[P, d]``; prompts are ``[P, n, H]``."""

    def logits(
        self, z: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> F32:
        return self.service.logits(self.prompts(z), texts, candidate_ids)


#: Builds the evaluator of a run from its service, projection recipe and p0 (the Tuner's
#: ``evaluator`` argument; resume rebuilds it the same way).
EvaluatorFactory = Callable[[Service, ProjectionRecipe, F32], Evaluator]


def make_evaluator(
    service: Service, recipe: ProjectionRecipe, p0: F32, sessions: str = "auto"
) -> Evaluator:
    """The default evaluator for ``service``: a projection session when the service offers
    them and ``sessions`` allows it (:func:`choose_evaluator`), else a
    :class:`ProjectingEvaluator`."""
    return choose_evaluator(service, recipe, p0, sessions)


# --------------------------------------------------------------------------- sessions


class SessionEvaluator(_LocalProjection):
    """Candidates scored through a projection session (see the module docstring). The
    local A also checks the fingerprint of the server's; only the logits go through the
    session."""

    service: SessionService

    def __init__(self, service: SessionService, recipe: ProjectionRecipe, p0: F32) -> None:
        super().__init__(service, recipe, p0)
        self.session = service.open_session(
            recipe, self.p0, expected_fingerprint=self.projection.fingerprint()
        )

    def logits(
        self, z: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> F32:
        return self.service.session_logits(self.session, z, texts, candidate_ids)

    def close(self) -> None:
        close_session(self.service, self.session, "projection session")


def close_session(service: SessionService, session: ProjectionSession, what: str) -> None:
    """Close ``session``, logging (not raising) a failure: it expires by itself, and a
    finished run must never fail for it."""
    try:
        service.close_session(session)
    except BBTError as exc:
        log.warning("could not close the %s: %s", what, exc)


def offers_sessions(service: Service) -> bool:
    return isinstance(service, SessionService) and service.supports_sessions()


def _worth_it(service: Service) -> bool:
    """A session saves upload bytes; an in-process service (LocalClient) uploads nothing."""
    return not getattr(service, "in_process", False)


def choose_evaluator(
    service: Service, recipe: ProjectionRecipe, p0: F32, sessions: str = "auto"
) -> Evaluator:
    """A :class:`SessionEvaluator` or a :class:`ProjectingEvaluator`, by ``sessions``."""
    if sessions not in SESSIONS_MODES:
        raise ConfigurationError(f"sessions must be auto, on or off, not {sessions!r}")
    if sessions == "off" or (sessions == "auto" and not _worth_it(service)):
        return ProjectingEvaluator(service, recipe, p0)
    if not offers_sessions(service):
        if sessions == "on":
            raise ConfigurationError(
                "sessions=on, but the service does not offer projection sessions (no "
                "'sessions' in its capabilities: a protocol-v1 server, or one started with "
                "--no-sessions); use sessions=auto or off"
            )
        return ProjectingEvaluator(service, recipe, p0)
    assert isinstance(service, SessionService)
    if sessions == "on":
        return SessionEvaluator(service, recipe, p0)
    try:
        return SessionEvaluator(service, recipe, p0)
    except (ProtocolError, APIStatusError) as exc:
        # A server that rebuilt another A, or refused the session (too large for its
        # bounds, say): the run still works with full prompts, bitwise the same.
        log.warning("projection session not used (%s); sending full prompts instead", exc)
        return ProjectingEvaluator(service, recipe, p0)
