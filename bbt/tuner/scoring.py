"""How logits become scores, and the rules for non-finite values (a service that returns
NaN or inf), as pure functions of arrays: :class:`bbt.tuner.tuner.Tuner` applies them.

- **Training.** A candidate whose logits hold a non-finite value gets a NaN loss and metric
  (a hinge or accuracy of such logits can look finite, but means nothing).
- **The non-finite rule.** A candidate whose loss is not finite gets the worst finite loss
  of its generation (:data:`NONFINITE_PENALTY` when none is finite) for CMA-ES, can never
  become the best candidate, and is counted in the generation's ``nonfinite``.
- **Dev.** A dev score from non-finite logits is the worst possible (metric -inf,
  cross-entropy inf) and is never selected.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from bbt.tuner._state import Candidate
from bbt.tuner.losses import cross_entropy

F64 = np.ndarray[Any, np.dtype[np.float64]]
Scorer = Callable[[Any, Any], Any]

#: The loss of a candidate with non-finite logits or loss when no candidate of its generation
#: has a finite loss (otherwise it gets the generation's worst finite loss). Large but finite:
#: CMA-ES only ranks, and a finite value keeps its arithmetic (and the history) clean.
NONFINITE_PENALTY = 1e30


def train_scores(logits: Any, labels: Any, loss: Scorer, metric: Scorer) -> tuple[F64, F64]:
    """The loss and the task metric of each candidate, both [P]; NaN for a candidate with
    any non-finite logit."""
    with np.errstate(all="ignore"):
        losses = np.asarray(loss(logits, labels), dtype=np.float64)
        metrics = np.asarray(metric(logits, labels), dtype=np.float64)
    bad = ~np.isfinite(logits).reshape(logits.shape[0], -1).all(axis=1)
    if bad.any():
        losses = np.where(bad, np.nan, losses)
        metrics = np.where(bad, np.nan, metrics)
    return losses, metrics


def dev_scores(logits: Any, labels: Any, metric: Scorer) -> tuple[float, float] | None:
    """Dev metric and dev cross-entropy of one candidate; ``None`` when the logits are not
    all finite (the caller scores it as the worst)."""
    if not np.isfinite(logits).all():
        return None
    return float(metric(logits, labels)[0]), float(cross_entropy(logits, labels)[0])


def nonfinite_rule(loss: F64) -> tuple[F64, F64, int]:
    """(losses CMA-ES sees, losses for picking the best, number of non-finite ones)."""
    bad = ~np.isfinite(loss)
    k = int(bad.sum())
    if k == 0:
        return loss, loss, 0
    worst = float(loss[~bad].max()) if k < loss.size else NONFINITE_PENALTY
    # inf where non-finite for picking the best: such a candidate never becomes it.
    return np.where(bad, worst, loss), np.where(bad, math.inf, loss), k


def beats(
    metric: float, ce: float, sel_metric: float | None, sel_ce: float | None, *, first: bool
) -> bool:
    """Whether a dev score (``metric``, ``ce``) beats the selection's: higher metric, or equal
    with a lower cross-entropy; on a full tie the earlier stays. ``first``: nothing is
    selected yet. A score from non-finite logits (metric -inf) never wins."""
    return math.isfinite(metric) and (
        first
        or sel_metric is None
        or metric > sel_metric
        or (metric == sel_metric and ce < (sel_ce or math.inf))
    )


def takes_selection(cand: Candidate, selected: Candidate | None) -> bool:
    """Whether ``cand``, scored on dev, takes the selection from ``selected`` (:func:`beats`);
    a candidate without dev scores never does."""
    metric, ce = cand.dev_metric, cand.dev_ce
    if metric is None or ce is None:
        return False
    return beats(
        metric,
        ce,
        None if selected is None else selected.dev_metric,
        None if selected is None else selected.dev_ce,
        first=selected is None,
    )
