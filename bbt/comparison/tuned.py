"""BBT and BBTv2 through :func:`bbt.tuner.tune` with the user's budget, in memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bbt.comparison.base import (
    Classifier,
    CompareContext,
    ComparisonError,
    CurvePoint,
    Fitted,
    IntArray,
    Kind,
)
from bbt.comparison.curves import HeldOutCurve
from bbt.tuner.config import TuneConfig
from bbt.tuner.data import Example
from bbt.tuner.methods import build_tuner
from bbt.tuner.predict import TunedPrompt
from bbt.tuner.prompts import InitialPrompt
from bbt.tuner.records import GenerationRecord


@dataclass
class TunedPredictor(Classifier):
    prompt: TunedPrompt

    def predict_rows(self, examples: Sequence[Example]) -> IntArray:
        preds = self.prompt.predict([dict(e.fields) for e in examples])
        return np.array([p.index for p in preds], dtype=np.int64)


class _Tuned:
    name = "bbt"
    kind: Kind = "black-box"
    method = "bbt"

    def initial_prompt(self, ctx: CompareContext) -> InitialPrompt | None:
        """Where p0 comes from; None: the method's default (the vocabulary)."""
        return None

    def fit(self, ctx: CompareContext) -> Fitted:
        svc = ctx.service
        held = HeldOutCurve(ctx, svc.usage.copy())
        curve: list[CurvePoint] = []

        def record(rec: GenerationRecord) -> None:
            if rec.best_dev_metric is not None:
                used = held.tuning_spent()
                curve.append(CurvePoint(rec.calls, used.tokens, rec.best_dev_metric, "dev"))

        cfg = TuneConfig(
            budget=ctx.budget, seed=ctx.seed, method=self.method, n_tokens=ctx.n_tokens
        )
        init = self.initial_prompt(ctx)
        # tune()'s loop, in memory, with a held-out checkpoint after each step.
        tuner = build_tuner(
            svc, ctx.task, ctx.train, ctx.dev, cfg, initial_prompt=init, callbacks=[record]
        )
        try:
            tuner.start()
            held.observe(tuner)
            while not tuner.done():
                tuner.step()
                held.observe(tuner)
            sel = tuner.finish()
            result = tuner.prompts(sel.z)[0]
        finally:
            tuner.close()
        info = svc.model_info()
        from bbt.tuner.tasks import verbalizer_ids

        prompt = TunedPrompt(
            result,
            ctx.task,
            info.id,
            verbalizer_ids(ctx.task, svc),
            service=svc,
            use_registry=False,
        )
        notes: dict[str, Any] = {"dev_metric": sel.dev_metric, "tuning_calls": tuner.calls}
        if init is not None:
            notes["init"] = (
                f"prompt:{init.prompt_id}" if init.kind == "prompt" else f"run:{init.path}"
            )
        return Fitted(
            TunedPredictor(prompt),
            curve=[*held.points, *curve],
            notes=notes,
            curve_usage=held.as_usage() if held.points else None,
        )


class BBT(_Tuned):
    """Black-Box Tuning: CMA-ES over z, p = A z + p0, the user's budget of calls."""

    name = "bbt"
    method = "bbt"


class BBTPretrained(_Tuned):
    """BBT from a pre-trained prompt: p0 is a run's prompt (``--init run:DIR``, e.g. written
    by ``bbt pretrain`` or an earlier ``bbt tune`` on the same model) or a prompt in the
    service's registry (``--init prompt:ID``, e.g. one its operator shares), the user's
    budget."""

    name = "bbt-pretrained"
    method = "bbt"

    def initial_prompt(self, ctx: CompareContext) -> InitialPrompt | None:
        init = InitialPrompt.parse(ctx.init, ctx.seed) if ctx.init else None
        if init is None or init.kind not in ("run", "prompt"):
            raise ComparisonError(
                "bbt-pretrained needs --init run:DIR (a pre-trained or tuned run on the same "
                "model: bbt pretrain writes one) or --init prompt:ID (a registry prompt)"
            )
        return init


class BBTv2(_Tuned):
    """BBTv2: a deep prompt, one layer's z at a time."""

    name = "bbtv2"
    method = "bbtv2"
