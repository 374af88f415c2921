"""The old home of :mod:`bbt.client.projection_sessions`, kept for code that imports from it."""

from bbt.client.projection_sessions import (
    SESSION_NOT_FOUND,
    ProjectionSession,
    SessionChunk,
    accept_open,
    as_p0,
    as_spec,
    is_session_gone,
    open_request,
    plan_session_logits,
)

__all__ = [
    "SESSION_NOT_FOUND",
    "ProjectionSession",
    "SessionChunk",
    "accept_open",
    "as_p0",
    "as_spec",
    "is_session_gone",
    "open_request",
    "plan_session_logits",
]
