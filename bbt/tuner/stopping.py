"""Stopping a run early on calls without a dev gain, and what stopping early saved.

``TuneConfig.patience_calls`` = N stops the run at the first dev check at which the
selection (the dev-selected prompt) has not improved for N or more calls: since the last
check that changed it, or since the start (p0, scored at 0 calls). Checks come every
``eval_every`` calls, so the stop lands on the first check at or past N calls of no gain.
``budget`` stays the hard cap. ``patience`` (counted in dev checks) is the older rule; both
may be set, and the first that holds stops the run.

``TuneConfig.stop_ucb`` = T is the confidence-bound rule: at each dev check, from the
gains of the selection's dev metric over the last ``stop_window`` checks (the recent
improvement curve), an upper confidence bound on the gain the next ``stop_window`` checks
can bring (:func:`ucb_gain`: their mean gain plus :data:`UCB_Z` standard errors, times the
checks left, at most ``stop_window``); the run stops once that bound is below T (a metric
difference: 0.01 is one accuracy point) and at least ``stop_min_calls`` calls are spent.
Unlike patience it also stops a run whose gains are steady but too small to matter, and it
does not stop one that has just improved by a lot (the bound's spread keeps it going).

A run stopped by any rule reports :func:`calls_saved`: the budget it did not spend.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

from bbt.tuner._state import RunState

#: The stop reasons of the early-stopping rules.
EARLY_STOPS = ("early_stopping", "patience_calls", "ucb")
#: Where the run state keeps the calls of the last dev check that improved the selection.
IMPROVED_AT = "improved_at_calls"
#: Where the run state keeps the selection's dev metric after each dev check (the
#: improvement curve the confidence-bound rule reads), starting with p0's when scored.
DEV_CURVE = "dev_curve"
#: Standard errors above the mean gain: a one-sided 95% normal bound.
UCB_Z = 1.645


def after_dev_check(
    state: RunState, improved: bool, patience_calls: int | None, config: Any = None
) -> None:
    """Record a dev check's outcome; stop the run when ``patience_calls`` says so, or the
    confidence-bound rule of ``config`` (a :class:`~bbt.tuner.config.TuneConfig`)."""
    if improved:
        state.extra[IMPROVED_AT] = state.calls
    if state.stop_reason is None and stop_due(
        state.calls, int(state.extra.get(IMPROVED_AT, 0)), patience_calls
    ):
        state.stop_reason = "patience_calls"
    threshold = getattr(config, "stop_ucb", None)
    if threshold is None or state.selected is None or state.selected.dev_metric is None:
        return
    curve = state.extra.get(DEV_CURVE)
    if curve is None:
        initial = state.extra.get("initial_dev_metric")
        curve = [float(initial)] if isinstance(initial, float) and math.isfinite(initial) else []
    curve = [*curve, float(state.selected.dev_metric)]
    state.extra[DEV_CURVE] = curve
    if state.stop_reason is None and ucb_stop_due(
        curve,
        state.calls,
        config.budget,
        config.eval_every,
        threshold,
        config.stop_window,
        config.stop_min_calls,
    ):
        state.stop_reason = "ucb"


def ucb_gain(curve: Sequence[float], window: int, checks_left: int | None = None) -> float | None:
    """An upper confidence bound on the dev gain of the next ``window`` checks (fewer if
    only ``checks_left`` remain), from the last ``window`` gains of ``curve`` (the
    selection's dev metric after each check); None until the curve has that many gains."""
    if window < 1 or len(curve) < window + 1:
        return None
    recent = [float(v) for v in curve[-(window + 1) :]]
    gains = [b - a for a, b in itertools.pairwise(recent)]
    mean = sum(gains) / window
    spread = math.sqrt(sum((g - mean) ** 2 for g in gains) / (window - 1)) if window > 1 else 0.0
    horizon = window if checks_left is None else max(0, min(window, checks_left))
    return horizon * (mean + UCB_Z * spread / math.sqrt(window))


def ucb_stop_due(
    curve: Sequence[float],
    calls: int,
    budget: int,
    eval_every: int,
    threshold: float,
    window: int,
    min_calls: int,
) -> bool:
    """Whether a dev check at ``calls`` with this improvement curve ends the run."""
    if calls < min_calls:
        return False
    left = math.ceil(max(budget - calls, 0) / eval_every)
    bound = ucb_gain(curve, window, left)
    return bound is not None and bound < threshold


def stop_due(calls: int, improved_at: int, patience_calls: int | None) -> bool:
    """Whether a dev check at ``calls``, the last gain at ``improved_at``, ends the run."""
    return patience_calls is not None and calls - improved_at >= patience_calls


def calls_saved(budget: int, calls: int, stop_reason: str | None) -> int:
    """The calls an early stop left unspent (0 for any other end of the run)."""
    return max(budget - calls, 0) if stop_reason in EARLY_STOPS else 0
