"""The tuner on projection sessions (protocol 1.1): z goes to the server, not prompts.

:class:`SessionEvaluator` is an :class:`~bbt.tuner.evaluator.Evaluator` that opens a
session with the run's projection recipe and p0 and sends each population's z to it:
4 d bytes a candidate on the wire (2 KB at d = 500) instead of 4 n H (205 KB at n = 50,
H = 1024). It still builds A locally, once: to check that the server rebuilt the same A
(its fingerprint; another NumPy could draw another one) and to compute the prompt a run
saves as its result. On the same NumPy and BLAS both sides project bitwise alike (see
:func:`bbt.protocol.projection.project_rows`), so a run's history does not depend on
whether it used a session.

:func:`choose_evaluator` is what :func:`bbt.tuner.evaluator.make_evaluator` calls: with
``sessions="auto"`` (the default) it uses a session when the service offers them (the
``"sessions"`` capability) and sends requests (an in-process ``LocalClient`` uploads
nothing, so it keeps projecting locally), and full prompts otherwise; ``"on"`` requires a
session (``LocalClient`` then runs the server's session code) and ``"off"`` never opens
one. A session lost mid-run (idle timeout, eviction, a restarted
server) is reopened by the client from the recipe it kept; a resumed run opens a new one
from the manifest's recipe and p0.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from bbt.client import Service, SessionService
from bbt.errors import APIStatusError, BBTError, ConfigurationError, ProtocolError
from bbt.tuner.evaluator import Evaluator, ProjectingEvaluator
from bbt.tuner.projection import Projection, ProjectionRecipe

log = logging.getLogger("bbt.tuner")

F32 = np.ndarray[Any, np.dtype[np.float32]]
SessionsMode = Literal["auto", "on", "off"]
SESSIONS_MODES: tuple[SessionsMode, ...] = ("auto", "on", "off")


class SessionEvaluator(Evaluator):
    """Candidates scored through a projection session (see the module docstring)."""

    def __init__(self, service: SessionService, recipe: ProjectionRecipe, p0: F32) -> None:
        if p0.shape != (recipe.n_tokens, recipe.hidden_size):
            raise ValueError(
                f"p0 has shape {list(p0.shape)}; expected [{recipe.n_tokens}, {recipe.hidden_size}]"
            )
        self.service = service
        self.recipe = recipe
        self.projection = Projection(recipe)
        self.p0: F32 = np.ascontiguousarray(p0, dtype=np.float32)
        self.session = service.open_session(
            recipe, self.p0, expected_fingerprint=self.projection.fingerprint()
        )

    def prompts(self, z: np.ndarray[Any, Any]) -> F32:
        return self.projection.project(z, self.p0)

    def logits(
        self, z: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> F32:
        return self.service.session_logits(self.session, z, texts, candidate_ids)

    def close(self) -> None:
        try:
            self.service.close_session(self.session)
        except BBTError as exc:  # it expires by itself: never fail a finished run for it
            log.warning("could not close the projection session: %s", exc)


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
