"""What a tuner is built from, as one value.

:class:`TunerInputs` is the parameter object of :meth:`bbt.tuner.methods.Method.build`
and of :meth:`bbt.tuner.tuner.Tuner._prepare` (the hook a tuner subclass overrides to
check or change its inputs before the tuner is set up), so the tuner's signature is
written once, in :class:`~bbt.tuner.tuner.Tuner`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:
    from bbt.client import Service
    from bbt.tuner.config import TuneConfig
    from bbt.tuner.data import Example
    from bbt.tuner.evaluator import EvaluatorFactory
    from bbt.tuner.prompts import InitialPrompt
    from bbt.tuner.records import Callback
    from bbt.tuner.tasks import Task

__all__ = ["TunerInputs"]

F32 = np.ndarray[Any, np.dtype[np.float32]]
T = TypeVar("T")


@dataclass(frozen=True)
class TunerInputs:
    """The arguments of :class:`~bbt.tuner.tuner.Tuner`: the service, the task, the
    training and dev examples, the run's config (``None``: the tuner's default), the
    initial prompt, a resumed run's ``p0``, the callbacks and the evaluator factory
    (``None``: the one ``config.sessions`` picks)."""

    service: Service
    task: Task
    train: Sequence[Example]
    dev: Sequence[Example]
    config: TuneConfig | None = None
    initial_prompt: InitialPrompt | None = None
    p0: F32 | None = None
    callbacks: Sequence[Callback] = ()
    evaluator: EvaluatorFactory | None = None

    def make(self, cls: Callable[..., T], **extra: Any) -> T:
        """``cls`` (a :class:`~bbt.tuner.tuner.Tuner` class) built from these inputs, with
        ``extra`` keywords of its own."""
        keywords: dict[str, Any] = {
            "initial_prompt": self.initial_prompt,
            "p0": self.p0,
            "callbacks": self.callbacks,
        }
        if self.evaluator is not None:
            keywords["evaluator"] = self.evaluator
        return cls(self.service, self.task, self.train, self.dev, self.config, **keywords, **extra)
