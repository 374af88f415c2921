"""Held-out learning curves of the tuned methods (BBT, BBTv2), counted apart from tuning.

At a few checkpoints of the budget (``curve_points`` of them: calls 0, B/k, 2B/k, ...), the
prompt the tuner has selected so far (best on dev) is scored on the held-out rows. Those
calls are not part of learning: they are counted in :attr:`HeldOutCurve.usage` and the
runner takes them out of the fit's cost and reports them as ``curve_eval``. A checkpoint
whose selection has not changed since the last one reuses its figure and costs nothing.
Each point is placed at the tuning calls and tuning tokens spent when it was taken, so the
curve and the other methods' points share their axes. The run's own final figure (the
held-out metric of the prompt tuning ends with) closes the curve (the runner adds it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from bbt.client import Service, UsageStats
from bbt.comparison.base import CompareContext, CurvePoint, Usage, metric_of
from bbt.comparison.prompting import labels_of
from bbt.tuner.predict import TunedPrompt
from bbt.tuner.tasks import verbalizer_ids
from bbt.tuner.tuner import Tuner


def checkpoints(budget: int, points: int) -> list[int]:
    """The tuning calls at which a held-out point is taken: ``points`` of them, evenly
    spaced from 0 (the initial prompt) up to, not including, the budget."""
    if points <= 0:
        return []
    return sorted({c for i in range(points) if (c := round(budget * i / points)) < budget})


@dataclass
class HeldOutCurve:
    """Collects held-out points while a tuner runs (:meth:`observe` after each step)."""

    ctx: CompareContext
    #: The service's usage when the fit started.
    start: UsageStats
    usage: UsageStats = field(default_factory=UsageStats)
    seconds: float = 0.0
    points: list[CurvePoint] = field(default_factory=list)
    _pending: list[int] = field(default_factory=list)
    _last: tuple[object, float] | None = None  # the selection scored last, its figure

    def __post_init__(self) -> None:
        if self.ctx.held_out:
            self._pending = checkpoints(self.ctx.budget, self.ctx.curve_points)

    @property
    def service(self) -> Service:
        return self.ctx.service

    def tuning_spent(self) -> UsageStats:
        """What tuning has spent so far: the fit's usage without the held-out checkpoints."""
        return self.service.usage - self.start - self.usage

    def observe(self, tuner: Tuner) -> None:
        while self._pending and tuner.calls >= self._pending[0]:
            self._pending.pop(0)
            self._point(tuner)

    def _point(self, tuner: Tuner) -> None:
        sel = tuner.selected
        if sel is None:
            return
        spent = self.tuning_spent()
        if self._last is not None and self._last[0] is sel:
            metric = self._last[1]
        else:
            svc, task, held = self.service, self.ctx.task, self.ctx.held_out
            before, t0 = svc.usage.copy(), time.perf_counter()
            info = svc.model_info()
            ids = verbalizer_ids(task, svc)
            prompt = TunedPrompt(
                tuner.prompts(sel.z)[0], task, info.id, ids, service=svc, use_registry=False
            )
            pred = np.array([p.index for p in prompt.predict([dict(e.fields) for e in held])])
            metric = metric_of(task, pred, labels_of(held))
            self.usage = self.usage + (svc.usage - before)
            self.seconds += time.perf_counter() - t0
            self._last = (sel, metric)
        self.points.append(CurvePoint(tuner.calls, spent.tokens, metric, "test"))

    def as_usage(self) -> Usage:
        return Usage.spent(self.usage, self.seconds)
