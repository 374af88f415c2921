"""What a comparison method is: fitted on the user's labelled rows, scored on held-out ones.

A :class:`ComparisonMethod` turns a :class:`CompareContext` (service, task, train and dev
rows of one seed) into a :class:`Predictor`; the runner (:mod:`bbt.comparison.runner`)
counts what the fit and the held-out scoring spent through the service's usage counters,
so a method never counts its own cost.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from bbt.client import Service, UsageStats
from bbt.errors import BBTError
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task

Kind = Literal["black-box", "white-box"]
IntArray = np.ndarray[Any, np.dtype[np.int64]]


class ComparisonError(BBTError):
    """A comparison cannot run as asked (unknown method, missing extra, no local model)."""


@dataclass(frozen=True)
class CompareContext:
    """Everything a method sees for one seed: the labelled rows it may learn from."""

    service: Service
    task: Task
    train: Sequence[Example]
    dev: Sequence[Example]
    seed: int
    budget: int
    #: The model directory when the model runs on this machine (embedded default or a
    #: model dir): what the white-box methods need; None for a remote service.
    local_model: str | None = None
    icl_demos: int = 8
    n_tokens: int = 50
    #: The ``--init`` of the ``bbt-pretrained`` row (``run:DIR``: a pre-trained or tuned run
    #: on the same model, e.g. from ``bbt pretrain``); None: that row is refused.
    init: str | None = None
    #: The held-out rows, for held-out learning curves only (a method never learns from
    #: them): tuned methods score their best-so-far prompt on them at ``curve_points``
    #: checkpoints of the budget, and report those calls apart (:attr:`Fitted.curve_usage`).
    held_out: Sequence[Example] = ()
    curve_points: int = 0


@dataclass
class CurvePoint:
    """A point of a learning curve: after ``calls`` API calls and ``tokens`` input tokens,
    the metric on ``split`` ("dev" during tuning, "test" at the end)."""

    calls: int
    tokens: int
    metric: float
    split: str = "dev"


@runtime_checkable
class Predictor(Protocol):
    def predict(self, examples: Sequence[Example]) -> IntArray:
        """The predicted class index of every example."""
        ...


class Classifier(ABC):
    """A :class:`Predictor` of a method: no rows get no predictions (and cost no service
    call); :meth:`predict_rows` classifies a non-empty batch."""

    def predict(self, examples: Sequence[Example]) -> IntArray:
        if not examples:
            return np.zeros(0, dtype=np.int64)
        return self.predict_rows(examples)

    @abstractmethod
    def predict_rows(self, examples: Sequence[Example]) -> IntArray:
        """The predicted class index of every example of a non-empty batch."""


@dataclass
class Fitted:
    """A method's fit: its predictor, an optional learning curve and notes for the report."""

    predictor: Predictor
    curve: list[CurvePoint] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    #: What the fit spent on held-out curve checkpoints (not learning: the runner takes it
    #: out of the fit's cost and reports it as ``curve_eval``).
    curve_usage: Usage | None = None


@runtime_checkable
class ComparisonMethod(Protocol):
    """One row of the comparison. ``name`` is what ``--methods`` takes."""

    name: str
    kind: Kind

    def fit(self, ctx: CompareContext) -> Fitted: ...


@dataclass
class Usage:
    """What one phase spent through the service."""

    calls: int = 0
    requests: int = 0
    input_tokens: int = 0
    #: The service scores the verbalizer at the mask (or next) position: it generates no
    #: tokens, so this stays 0 for every method bbt has today.
    output_tokens: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0

    @classmethod
    def spent(cls, delta: UsageStats, seconds: float) -> Usage:
        """The phase whose service usage counters moved by ``delta`` in ``seconds``."""
        return cls(
            calls=delta.calls,
            requests=delta.requests,
            input_tokens=delta.tokens,
            bytes_sent=delta.bytes_sent,
            bytes_received=delta.bytes_received,
            seconds=seconds,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MethodRun:
    """One method on one seed: ``compare.json``'s ``methods`` entries."""

    method: str
    kind: Kind
    seed: int
    metric_name: str
    metric: float | None
    fit: Usage
    evaluation: Usage
    price_per_1k_tokens: float | None = None
    curve: list[CurvePoint] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    #: The held-out curve checkpoints' own usage, apart from ``fit`` and ``evaluation``.
    curve_eval: Usage = field(default_factory=Usage)

    @property
    def cost(self) -> float | None:
        """Money the fit spent at the user's price (None without a price)."""
        if self.price_per_1k_tokens is None:
            return None
        tokens = self.fit.input_tokens + self.fit.output_tokens
        return tokens / 1000.0 * self.price_per_1k_tokens

    def as_dict(self) -> dict[str, Any]:
        eval_tokens = self.evaluation.input_tokens + self.evaluation.output_tokens
        price = self.price_per_1k_tokens
        return {
            "method": self.method,
            "kind": self.kind,
            "seed": self.seed,
            "metric_name": self.metric_name,
            "metric": self.metric,
            "calls": self.fit.calls,
            "requests": self.fit.requests,
            "input_tokens": self.fit.input_tokens,
            "output_tokens": self.fit.output_tokens,
            "bytes": self.fit.bytes_sent + self.fit.bytes_received,
            "wall_seconds": round(self.fit.seconds, 3),
            "cost": self.cost,
            "eval": self.evaluation.as_dict(),
            "eval_cost": None if price is None else eval_tokens / 1000.0 * price,
            "curve": [asdict(p) for p in self.curve],
            "curve_eval": self.curve_eval.as_dict(),
            "notes": self.notes,
            "error": self.error,
        }


def metric_of(task: Task, pred: np.ndarray[Any, Any], gold: np.ndarray[Any, Any]) -> float:
    """The task's metric of class predictions (as one-hot logits for the tuner's metric)."""
    from bbt.tuner.losses import get_metric

    onehot = np.eye(task.num_classes, dtype=np.float32)[np.asarray(pred, dtype=np.int64)]
    return float(np.asarray(get_metric(task.metric)(onehot, gold)).reshape(-1)[0])


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
