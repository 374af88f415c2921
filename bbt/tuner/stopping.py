"""Stopping a run early on calls without a dev gain, and what stopping early saved.

``TuneConfig.patience_calls`` = N stops the run at the first dev check at which the
selection (the dev-selected prompt) has not improved for N or more calls: since the last
check that changed it, or since the start (p0, scored at 0 calls). Checks come every
``eval_every`` calls, so the stop lands on the first check at or past N calls of no gain.
``budget`` stays the hard cap. ``patience`` (counted in dev checks) is the older rule; both
may be set, and the first that holds stops the run.

A run stopped by either rule reports :func:`calls_saved`: the budget it did not spend.
"""

from __future__ import annotations

from bbt.tuner._state import RunState

#: The stop reasons of the early-stopping rules.
EARLY_STOPS = ("early_stopping", "patience_calls")
#: Where the run state keeps the calls of the last dev check that improved the selection.
IMPROVED_AT = "improved_at_calls"


def after_dev_check(state: RunState, improved: bool, patience_calls: int | None) -> None:
    """Record a dev check's outcome; stop the run when ``patience_calls`` says so."""
    if improved:
        state.extra[IMPROVED_AT] = state.calls
    if state.stop_reason is None and stop_due(
        state.calls, int(state.extra.get(IMPROVED_AT, 0)), patience_calls
    ):
        state.stop_reason = "patience_calls"


def stop_due(calls: int, improved_at: int, patience_calls: int | None) -> bool:
    """Whether a dev check at ``calls``, the last gain at ``improved_at``, ends the run."""
    return patience_calls is not None and calls - improved_at >= patience_calls


def calls_saved(budget: int, calls: int, stop_reason: str | None) -> int:
    """The calls an early stop left unspent (0 for any other end of the run)."""
    return max(budget - calls, 0) if stop_reason in EARLY_STOPS else 0
