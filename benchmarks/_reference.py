"""What the two reference loops (``reference_bbt.py``, ``reference_bbtv2.py``) share.

The reference loops re-implement the papers' released code on purpose, independently of
``bbt.tuner`` (the parity benchmarks check bbt against them), so they share code only with
each other, here: the loss formulas (taken from ``bbt.tuner.losses``: a loss is a formula,
not part of a loop, see ``reference_bbt``), the run's settings, pycma's options, and the
scoring of one generation with the code's dev cadence and selection rule (on every call
whose number is a multiple of ``eval_every`` the candidate of *that* call is scored on dev;
it becomes the selection when its accuracy is strictly higher than the best so far, which
starts at 0).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bbt.tuner.losses import HINGE_MARGIN, cross_entropy, hinge

F32 = np.ndarray[Any, np.dtype[np.float32]]

#: The paper's code inserts vocabulary tokens from this id as its prompt placeholder.
PROMPT_OFFSET = 1000


def ce_loss(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """``torch.nn.CrossEntropyLoss(reduction='mean')`` over logits [B, C] (the shared
    definition, :func:`bbt.tuner.losses.cross_entropy`, for one candidate)."""
    return float(cross_entropy(logits, y)[0])


def hinge_loss(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    """sum over examples and wrong classes of max(0, l_j - l_y + margin), / B (the shared
    definition, :func:`bbt.tuner.losses.hinge`, margin ``HINGE_MARGIN`` = 2, for one
    candidate)."""
    return float(hinge(logits, y, HINGE_MARGIN)[0])


@dataclass
class DevPoint:
    calls: int
    dev_acc: float
    best_dev_acc: float
    selected_calls: int | None  # the call whose candidate is the selection


@dataclass
class Tally:
    """A run's counters, dev points and history, kept by :meth:`ReferenceLoop.score`."""

    t0: float = field(default_factory=time.perf_counter)
    calls: int = 0
    dev_calls: int = 0
    generations: int = 0
    best_dev: float = 0.0
    selected_calls: int | None = None
    points: list[DevPoint] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def summary(self) -> dict[str, Any]:
        """The run's counters for its result (``ReferenceResult`` of either loop)."""
        return {
            "calls": self.calls,
            "generations": self.generations,
            "dev_calls": self.dev_calls,
            "best_dev_acc": self.best_dev,
            "selected_calls": self.selected_calls,
            "dev_points": self.points,
            "history": self.history,
            "seconds": self.elapsed(),
        }

    def record(self, fitnesses: list[float], **extra: float) -> dict[str, float]:
        """Count a generation and append its history row (``extra`` after ``generation``)."""
        self.generations += 1
        rec = {
            "generation": self.generations,
            **extra,
            "calls": self.calls,
            "loss_min": min(fitnesses),
            "loss_mean": float(np.mean(fitnesses)),
            "seconds": self.elapsed(),
        }
        self.history.append(rec)
        return rec


class ReferenceLoop:
    """The settings and data of one reference run; subclasses add projection and schedule.

    Args:
        backend: the model; only ``info``, ``embed`` and ``logits`` are used.
        train_texts, train_labels, dev_texts, dev_labels: rendered inputs and label indices.
        candidate_ids: vocabulary ids of the verbalizer words, in label order.
    """

    def __init__(
        self,
        backend: Any,
        train_texts: list[str],
        train_labels: np.ndarray[Any, Any],
        dev_texts: list[str],
        dev_labels: np.ndarray[Any, Any],
        candidate_ids: np.ndarray[Any, Any],
        *,
        n_tokens: int = 50,
        dim: int = 500,
        popsize: int = 20,
        sigma: float = 1.0,
        alpha: float = 1.0,
        bound: float = 0.0,
        budget: int = 8000,
        eval_every: int = 100,
        loss: str = "ce",
        seed: int = 42,
    ) -> None:
        self.backend = backend
        self.train_texts, self.train_labels = train_texts, np.asarray(train_labels)
        self.dev_texts, self.dev_labels = dev_texts, np.asarray(dev_labels)
        self.candidate_ids = np.asarray(candidate_ids, dtype=np.int64)
        self.n_tokens, self.dim, self.popsize = n_tokens, dim, popsize
        self.sigma, self.alpha, self.bound, self.budget = sigma, alpha, bound, budget
        self.eval_every, self.seed = eval_every, seed
        self.loss_fn = {"ce": ce_loss, "hinge": hinge_loss}[loss]

    def cma_options(self, maxiter: int) -> dict[str, Any]:
        """pycma's options as the code sets them (bounds only when ``bound > 0``)."""
        opts: dict[str, Any] = {
            "seed": self.seed,
            "popsize": self.popsize,
            "maxiter": maxiter,
            "verbose": -1,
            "verb_log": 0,  # the code leaves pycma's log files on; they change nothing
        }
        if self.bound > 0:
            opts["bounds"] = [-self.bound, self.bound]
        return opts

    def score(
        self,
        tally: Tally,
        logits: np.ndarray[Any, Any],
        candidates: Sequence[Any] | np.ndarray[Any, Any],
        dev_prompt: Callable[[Any], F32],
    ) -> tuple[list[float], int | None]:
        """The training loss of each candidate of a generation (``logits`` [P, B, C]), one
        API call each, with a dev check on every ``eval_every``-th call (``dev_prompt``:
        a candidate's prompt, [1, ...]). Returns the losses and the index of the candidate
        that is now the selection, if this generation changed it."""
        fitnesses: list[float] = []
        selected: int | None = None
        for k in range(len(logits)):
            tally.calls += 1
            fitnesses.append(self.loss_fn(logits[k], self.train_labels))
            if tally.calls % self.eval_every == 0:
                prompt = dev_prompt(candidates[k])
                dev_logits = self.backend.logits(prompt, self.dev_texts, self.candidate_ids)[0][0]
                tally.dev_calls += 1
                acc = float((dev_logits.argmax(axis=1) == self.dev_labels).mean())
                if acc > tally.best_dev:
                    tally.best_dev, tally.selected_calls, selected = acc, tally.calls, k
                tally.points.append(
                    DevPoint(tally.calls, acc, tally.best_dev, tally.selected_calls)
                )
        return fitnesses, selected
