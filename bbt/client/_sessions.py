"""The old home of :mod:`bbt.client.projection_sessions`, kept for code that imports from it
(bbt.cli's dry run did)."""

from bbt.client.projection_sessions import ProjectionSession, SessionChunk, plan_session_logits

__all__ = ["ProjectionSession", "SessionChunk", "plan_session_logits"]
