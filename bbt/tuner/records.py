"""What a run reports after every generation: its :class:`GenerationRecord` (one line of
``history.jsonl``) and the :class:`Callback` protocol that receives it."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Protocol


@dataclass
class GenerationRecord:
    """One line of the run's history."""

    generation: int
    calls: int
    dev_calls: int
    loss_min: float
    loss_mean: float
    loss_max: float
    loss_std: float
    best_loss: float
    train_metric: float
    sigma: float
    wall_time: float
    dev_metric: float | None = None
    dev_ce: float | None = None
    best_dev_metric: float | None = None
    selected_calls: int | None = None
    # Set on the generations that ran a dev check: the CMA-ES mean's dev scores (with
    # ``eval_mean``) and which candidate the selection is after the check.
    mean_dev_metric: float | None = None
    mean_dev_ce: float | None = None
    selected: str | None = None
    nonfinite: int = 0  # candidates whose logits or loss were NaN/inf (see Tuner.tell)
    layer: int | None = None  # BBTv2: the layer this generation optimised

    def as_dict(self) -> dict[str, Any]:
        row = asdict(self)
        if row["layer"] is None:
            del row["layer"]  # BBT: the record's fields as they always were
        return row


class Callback(Protocol):
    """Called after every generation with its record (dev scores included when the
    generation ran a dev evaluation). Returning ``True`` stops the run after it."""

    def __call__(self, record: GenerationRecord, /) -> bool | None: ...
