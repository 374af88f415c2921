"""BBTv2 on deep projection sessions (protocol 1.5): z goes to the server for every layer.

:class:`DeepSessionEvaluator` opens one deep session with every layer's projection recipe
and p0 (see :mod:`bbt.protocol.deep_sessions`) and sends each population's z instead of
its deep prompts [P, L, n, H]. BBTv2 varies one layer a generation, so the client sends
that layer's columns per candidate (4 d bytes) and the held layers' z once a request.
It keeps the local :class:`~bbt.tuner.bbtv2.DeepEvaluator`, whose projections check the
server's fingerprint and compute the prompts a run saves. On the same NumPy and BLAS the
server projects bitwise as the client does, so a run's history does not depend on
whether it used a session.

:func:`choose_deep_evaluator` mirrors :func:`bbt.tuner.evaluator.choose_evaluator`:
``sessions="auto"`` uses a deep session when the service offers them (the
``"deep_sessions"`` capability) and sends requests, and full deep prompts otherwise (a
server from before 1.5 keeps working); ``"on"`` requires one; ``"off"`` never opens one.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bbt.client import Service, SessionService
from bbt.errors import APIStatusError, ConfigurationError, ProtocolError
from bbt.protocol import DEEP_SESSIONS_CAPABILITY
from bbt.tuner.evaluator import SESSIONS_MODES, Evaluator, close_session, offers_sessions

if TYPE_CHECKING:
    from bbt.tuner.bbtv2 import DeepEvaluator

F32 = np.ndarray[Any, np.dtype[np.float32]]

log = logging.getLogger("bbt.tuner")

__all__ = ["DeepSessionEvaluator", "choose_deep_evaluator", "offers_deep_sessions"]


class DeepSessionEvaluator(Evaluator):
    """BBTv2's candidates scored through a deep session; ``z`` is [P, L * d]."""

    def __init__(self, local: DeepEvaluator, service: SessionService) -> None:
        self.local = local
        self.service = service
        self.projection = local.projection
        self.p0 = local.p0
        recipes = local.projection.recipes
        deeper = local.p0[1:]
        self.session = service.open_session(
            recipes[0],
            local.p0[0],
            expected_fingerprint=local.projection.fingerprint(),
            layers=recipes[1:],
            # Deeper layers start from 0 (unless resumed from elsewhere): nothing to send.
            layer_p0=deeper if deeper.any() else None,
        )

    def prompts(self, z: np.ndarray[Any, Any]) -> F32:
        return self.local.prompts(z)

    def logits(
        self, z: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> F32:
        zz = np.asarray(z, dtype=np.float64)
        return self.service.session_logits(self.session, zz, texts, candidate_ids)

    def close(self) -> None:
        close_session(self.service, self.session, "deep projection session")


def offers_deep_sessions(service: Service) -> bool:
    return offers_sessions(service) and (
        DEEP_SESSIONS_CAPABILITY in service.model_info().capabilities
    )


def choose_deep_evaluator(local: DeepEvaluator, sessions: str = "auto") -> Evaluator:
    """A :class:`DeepSessionEvaluator` or ``local`` (full deep prompts), by ``sessions``."""
    if sessions not in SESSIONS_MODES:
        raise ConfigurationError(f"sessions must be auto, on or off, not {sessions!r}")
    service = local.service
    in_process = bool(getattr(service, "in_process", False))
    if sessions == "off" or (sessions == "auto" and in_process):
        return local
    if not offers_deep_sessions(service):
        if sessions == "on":
            raise ConfigurationError(
                "sessions=on, but the service does not offer deep projection sessions (no "
                f"{DEEP_SESSIONS_CAPABILITY!r} in its capabilities: a server before protocol "
                "1.5, or one started with --no-sessions); use sessions=auto or off"
            )
        return local
    assert isinstance(service, SessionService)
    if sessions == "on":
        return DeepSessionEvaluator(local, service)
    try:
        return DeepSessionEvaluator(local, service)
    except (ProtocolError, APIStatusError) as exc:
        log.warning("deep projection session not used (%s); sending deep prompts instead", exc)
        return local
