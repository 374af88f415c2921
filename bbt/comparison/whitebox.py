"""White-box references: what a provider holding the weights could train with gradients
(prompt tuning, P-tuning v2, LoRA through ``peft``; ``bbt[whitebox]``).

They call :func:`bbt.whitebox.train_whitebox`, imported only when used, and run only when
the model is on this machine (the embedded default or a model directory): a remote
service's weights are out of reach. They make no API call, so their cost columns are 0 and
their note says how many steps and parameters they trained.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bbt.comparison.base import Classifier, CompareContext, ComparisonError, Fitted, IntArray, Kind
from bbt.tuner.data import Example


def _whitebox() -> Any:
    try:
        return importlib.import_module("bbt.whitebox")
    except ImportError as exc:
        raise ComparisonError(
            f"the white-box methods need bbt.whitebox and its extra ({exc}); "
            "install it with: pip install 'bbt[whitebox]'"
        ) from None


@dataclass
class WhiteboxPredictor(Classifier):
    result: Any

    def predict_rows(self, examples: Sequence[Example]) -> IntArray:
        return np.asarray(self.result.predict(list(examples)), dtype=np.int64)


class Whitebox:
    """One of ``bbt.whitebox.WHITEBOX_METHODS`` as a comparison row."""

    kind: Kind = "white-box"

    def __init__(self, method: str, steps: int = 100) -> None:
        self.method = method
        self.name = f"whitebox-{method}"
        self.steps = steps

    def fit(self, ctx: CompareContext) -> Fitted:
        if ctx.local_model is None:
            raise ComparisonError(
                f"{self.name} needs the model's weights on this machine (the embedded default "
                "server); a remote service or the mock does not expose them"
            )
        wb = _whitebox()
        if self.method not in wb.WHITEBOX_METHODS:
            raise ComparisonError(
                f"bbt.whitebox has no method {self.method!r}: {', '.join(wb.WHITEBOX_METHODS)}"
            )
        model_dir = None if ctx.local_model == "embedded" else ctx.local_model
        result = wb.train_whitebox(
            self.method,
            task=ctx.task,
            train=[*ctx.train, *ctx.dev],
            model_dir=model_dir,
            steps=self.steps,
            seed=ctx.seed,
        )
        notes = {
            "steps": int(result.steps),
            "train_seconds": float(result.train_seconds),
            "trainable_params": int(result.trainable_params),
        }
        return Fitted(WhiteboxPredictor(result), notes=notes)


WHITEBOX_NAMES = ("prompt-tuning", "p-tuning-v2", "lora")
