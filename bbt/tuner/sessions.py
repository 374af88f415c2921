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

# The code lives in bbt.tuner.evaluator, next to the evaluator seam it plugs into:
# make_evaluator chooses between these, and a module of its own imported the seam while the
# seam imported it back (an import circle). This name stays for existing imports.
from bbt.tuner.evaluator import (
    SESSIONS_MODES,
    SessionEvaluator,
    SessionsMode,
    choose_evaluator,
    offers_sessions,
)

__all__ = [
    "SESSIONS_MODES",
    "SessionEvaluator",
    "SessionsMode",
    "choose_evaluator",
    "offers_sessions",
]
