"""Losses and metrics over verbalizer logits, vectorised over a population.

Every function takes logits of shape [P, B, C] (P candidate prompts, B examples, C classes:
the logits of the verbalizer words only, as in Sun et al., 2022, Sec. 3.3) and integer
labels [B], and returns one value per candidate, shape [P]. The arithmetic is float64.
Predictions are ``argmax`` over classes; a tie goes to the lowest class index.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

from bbt.errors import ConfigurationError

LossName = Literal["ce", "hinge", "neg_accuracy", "neg_f1"]
LOSSES: tuple[LossName, ...] = ("ce", "hinge", "neg_accuracy", "neg_f1")

#: The margin of the paper's hinge loss (their released code uses 2 for every task).
HINGE_MARGIN = 2.0

F64 = np.ndarray[Any, np.dtype[np.float64]]


def _prep(logits: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> tuple[F64, Any]:
    x = np.asarray(logits, dtype=np.float64)
    if x.ndim == 2:
        x = x[None]
    y = np.asarray(labels, dtype=np.int64)
    if x.ndim != 3 or y.shape != (x.shape[1],):
        raise ValueError(f"logits must be [P, B, C] with labels [B]; got {x.shape} and {y.shape}")
    return x, y


def _target(x: F64, y: Any) -> F64:
    idx = np.broadcast_to(y[None, :, None], (x.shape[0], x.shape[1], 1))
    return np.take_along_axis(x, idx, axis=2)[..., 0]


def cross_entropy(logits: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> F64:
    """Mean over examples of -log softmax(logits)[label]."""
    x, y = _prep(logits, labels)
    m = x.max(axis=2, keepdims=True)
    lse = (m[..., 0] + np.log(np.exp(x - m).sum(axis=2))).astype(np.float64)
    return np.asarray((lse - _target(x, y)).mean(axis=1), dtype=np.float64)


def hinge(
    logits: np.ndarray[Any, Any], labels: np.ndarray[Any, Any], margin: float = HINGE_MARGIN
) -> F64:
    """Multi-class hinge of the paper's code: mean over examples of
    sum_{c != y} max(0, l_c - l_y + margin)."""
    x, y = _prep(logits, labels)
    t = _target(x, y)
    terms = np.maximum(0.0, x - t[..., None] + margin)
    # The target class's own term is exactly `margin`; remove it rather than mask.
    per_example = terms.sum(axis=2) - margin
    return np.asarray(per_example.mean(axis=1), dtype=np.float64)


def predictions(logits: np.ndarray[Any, Any]) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Argmax class along the last axis; a tie goes to the lowest index."""
    x = np.asarray(logits)
    return np.asarray(x.argmax(axis=-1), dtype=np.int64)


def accuracy(logits: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> F64:
    """Share of examples whose argmax class is the label, per candidate."""
    x, y = _prep(logits, labels)
    return np.asarray((predictions(x) == y[None, :]).mean(axis=1), dtype=np.float64)


def f1(logits: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> F64:
    """F1 of class 1 for two classes (as the paper reports for MRPC), macro F1 otherwise.
    A class absent from both predictions and labels is left out of the macro average."""
    x, y = _prep(logits, labels)
    c = x.shape[2]
    pred = predictions(x)  # [P, B]
    classes = [1] if c == 2 else list(range(c))
    scores = []
    present = []
    for k in classes:
        tp = ((pred == k) & (y[None] == k)).sum(axis=1)
        fp = ((pred == k) & (y[None] != k)).sum(axis=1)
        fn = ((pred != k) & (y[None] == k)).sum(axis=1)
        denom = 2 * tp + fp + fn
        scores.append(np.where(denom > 0, 2 * tp / np.maximum(denom, 1), 0.0))
        present.append(denom > 0)
    s = np.stack(scores, axis=1).astype(np.float64)  # [P, K]
    if c == 2:
        return np.asarray(s[:, 0], dtype=np.float64)
    mask = np.stack(present, axis=1)
    n = np.maximum(mask.sum(axis=1), 1)
    return np.asarray((s * mask).sum(axis=1) / n, dtype=np.float64)


def neg_accuracy(logits: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> F64:
    """-accuracy: the paper's "perf" loss (CMA-ES only ranks candidates)."""
    return -accuracy(logits, labels)


def neg_f1(logits: np.ndarray[Any, Any], labels: np.ndarray[Any, Any]) -> F64:
    """-F1 (see :func:`f1`)."""
    return -f1(logits, labels)


LossFn = Callable[[np.ndarray[Any, Any], np.ndarray[Any, Any]], F64]

_LOSSES: dict[str, LossFn] = {
    "ce": cross_entropy,
    "hinge": hinge,
    "neg_accuracy": neg_accuracy,
    "neg_f1": neg_f1,
}
_METRICS: dict[str, LossFn] = {"accuracy": accuracy, "f1": f1}


def get_loss(name: str) -> LossFn:
    """The loss called ``name`` (one of :data:`LOSSES`)."""
    if name not in _LOSSES:
        raise ConfigurationError(f"unknown loss {name!r}; choose one of {', '.join(LOSSES)}")
    return _LOSSES[name]


def get_metric(name: str) -> LossFn:
    """The metric called ``name``: ``accuracy`` or ``f1``."""
    if name not in _METRICS:
        raise ConfigurationError(f"unknown metric {name!r}; choose accuracy or f1")
    return _METRICS[name]


def softmax(logits: np.ndarray[Any, Any]) -> F64:
    """Class probabilities along the last axis (float64, max-shifted for stability)."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(e / e.sum(axis=-1, keepdims=True), dtype=np.float64)
