"""The callback protocol of a run: hooks on each generation, on each dev evaluation and at
the end.

A :class:`TuneCallback` is a :class:`~bbt.tuner.records.Callback` (it is called with each
:class:`~bbt.tuner.records.GenerationRecord`), so it goes wherever callbacks go
(``tune(..., callbacks=[...])``, ``resume``, :class:`~bbt.tuner.tuner.Tuner`). Subclass it
and override the hooks you need:

- :meth:`~TuneCallback.on_generation` after every generation; returning ``True`` stops the
  run after it (``stop_reason`` ``"callback"``);
- :meth:`~TuneCallback.on_evaluation` after a generation that ran a dev evaluation (its
  record carries ``dev_metric``);
- :meth:`~TuneCallback.on_finish` with the :class:`~bbt.tuner.manifest.TuneResult` once the
  run has completed (not after a failure or an interrupt).

A plain function stays a valid callback: it gets the records and no ``on_finish``.
``bbt tune``'s progress bar is a :class:`TuneCallback`; :class:`bbt.tuner.tracking.MLflowCallback`
is another.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bbt.tuner.records import GenerationRecord


class TuneCallback:
    """Base class of the hooks; each does nothing until overridden."""

    def on_generation(self, record: GenerationRecord) -> bool | None:
        """After every generation; ``True`` stops the run after it."""
        return None

    def on_evaluation(self, record: GenerationRecord) -> None:
        """After a generation that scored a candidate on dev (``record.dev_metric``)."""

    def on_finish(self, result: Any) -> None:
        """Once the run has completed, with its :class:`~bbt.tuner.manifest.TuneResult`."""

    def __call__(self, record: GenerationRecord, /) -> bool | None:
        stop = self.on_generation(record)
        if record.dev_metric is not None:
            self.on_evaluation(record)
        return stop


def notify_finish(callbacks: Iterable[object], result: Any) -> None:
    """Call ``on_finish(result)`` on each callback that has one."""
    for cb in callbacks:
        finish = getattr(cb, "on_finish", None)
        if callable(finish):
            finish(result)
