"""Projection sessions in the server (protocol 1.1), for any backend.

The app layer owns sessions, not the backends: :class:`bbt.protocol.sessions.SessionHost`
builds A once per session and projects each call's z to prompts, then the backend scores
those prompts through its ordinary ``logits``. So the mock, the Hugging Face backend and
any other backend serve sessions unchanged. A backend may offer to project on its own
device by defining ``session_projector(matrix, p0) -> (z -> prompts)`` (see
:data:`bbt.protocol.sessions.Projector`); without it NumPy projects in float32 exactly as
the client's ``Projection.project`` does.

The host's code lives in :mod:`bbt.protocol.sessions` so that
:class:`bbt.client.LocalClient` runs the very same code without importing the server.
"""

from __future__ import annotations

from bbt.protocol import ModelInfo
from bbt.protocol.sessions import (
    Projector,
    SessionHost,
    SessionLimits,
    SessionNotFound,
    SessionsFull,
    tenant_of,
)
from bbt.server.backend import Backend


def session_host(backend: Backend, info: ModelInfo, limits: SessionLimits) -> SessionHost:
    """The session host of ``backend``, projecting on its device when it offers to."""
    projector: Projector | None = getattr(backend, "session_projector", None)
    return SessionHost(info, backend.embed, backend.tokenize, limits, projector=projector)


__all__ = [
    "SessionHost",
    "SessionLimits",
    "SessionNotFound",
    "SessionsFull",
    "session_host",
    "tenant_of",
]
