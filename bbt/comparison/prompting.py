"""Prompting without tuning: the task's manual prompt, a choice among several manual
templates by dev accuracy, and in-context learning (k demonstrations in the input).

All three score the verbalizer words at the mask (or the next position for a decoder)
with an empty soft prompt, so they need nothing from the service but ``logits``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bbt.client import Service
from bbt.comparison.base import Classifier, CompareContext, Fitted, IntArray, Kind
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task, verbalizer_ids


def render_inputs(task: Task, service: Service, examples: Sequence[Example]) -> list[str]:
    info = service.model_info()
    return [task.render_for(info, ex.fields) for ex in examples]


def zero_prompt_logits(
    service: Service, task: Task, texts: Sequence[str], ids: Sequence[int] | None = None
) -> np.ndarray[Any, Any]:
    """Verbalizer logits [B, C] of ``texts`` with no soft prompt (n = 0)."""
    info = service.model_info()
    cand = list(ids) if ids is not None else verbalizer_ids(task, service)
    empty = np.zeros((1, 0, info.hidden_size), dtype=np.float32)
    return np.asarray(service.logits(empty, list(texts), cand)[0])


def labels_of(examples: Sequence[Example]) -> IntArray:
    return np.array([-1 if e.label is None else e.label for e in examples], dtype=np.int64)


@dataclass
class TemplatePredictor(Classifier):
    service: Service
    task: Task

    def predict_rows(self, examples: Sequence[Example]) -> IntArray:
        texts = render_inputs(self.task, self.service, examples)
        return np.asarray(zero_prompt_logits(self.service, self.task, texts).argmax(-1), np.int64)


class ManualPrompt:
    """The task's own template and verbalizer, no tuning: zero calls before scoring."""

    name = "manual"
    kind: Kind = "black-box"

    def fit(self, ctx: CompareContext) -> Fitted:
        info = ctx.service.model_info()
        served = ctx.task.for_kind(info.kind, info.id).template  # what the model is sent
        return Fitted(TemplatePredictor(ctx.service, ctx.task), notes={"template": served})


def template_variants(task: Task) -> list[Task]:
    """The task's template and a few generic rewrites of it (same fields, same words)."""
    fields = " ".join("{" + f + "}" for f in task.fields)
    if task.kind == "masked_lm":
        alternatives = [
            f"{fields} All in all, it was {{mask}} .",
            f"{{mask}} : {fields}",
            f"{fields} In short: {{mask}} .",
            f"Topic or tone: {{mask}} . {fields}",
        ]
    else:
        alternatives = [
            f"{fields}\nAll in all, it was",
            f"Text: {fields}\nAnswer:",
            f"{fields}\nIn short:",
        ]
    out = [task]
    for template in alternatives:
        if template != task.template:
            out.append(dataclasses.replace(task, template=template))
    return out


def served_variants(task: Task, service: Service) -> list[Task]:
    """:func:`template_variants` for the served model's kind: the task's own template for
    that kind first (a causal model: its causal twin), then rewrites written for that kind
    (rewriting the masked template and then converting would give the causal twin every
    time)."""
    info = service.model_info()
    return template_variants(task.for_kind(info.kind, info.id))


class ManualSelect:
    """Several manual templates; the one with the best dev accuracy is kept.

    ``manual-ppl`` (:mod:`bbt.comparison.perplexity`) chooses among the same templates by
    perplexity instead, where the service returns prompt log-probabilities."""

    name = "manual-select"
    kind: Kind = "black-box"

    def fit(self, ctx: CompareContext) -> Fitted:
        svc = ctx.service
        gold = labels_of(ctx.dev)
        scores: list[float] = []
        variants = served_variants(ctx.task, svc)
        for variant in variants:
            pred = TemplatePredictor(svc, variant).predict(ctx.dev)
            scores.append(float((pred == gold).mean()) if len(gold) else 0.0)
        best = int(np.argmax(scores))
        return Fitted(
            TemplatePredictor(svc, variants[best]),
            notes={
                "template": variants[best].template,
                "dev_scores": {v.template: s for v, s in zip(variants, scores, strict=True)},
            },
        )


@dataclass
class DemoPredictor(Classifier):
    service: Service
    task: Task
    demos: list[str]

    def _text(self, query: str, n: int) -> str:
        return " ".join([*self.demos[:n], query])

    def _fit_demos(self, query: str) -> str:
        """The query after as many demonstrations as the model's length allows."""
        info = self.service.model_info()
        max_chars = info.limits.max_text_chars
        max_len = info.max_sequence_length - 8
        n = len(self.demos)
        while n > 0:
            text = self._text(query, n)
            if len(text) <= max_chars:
                count = len(self.service.tokenize([text]).ids[0])
                if count <= max_len:
                    return text
            n -= 1
        return query

    def predict_rows(self, examples: Sequence[Example]) -> IntArray:
        queries = render_inputs(self.task, self.service, examples)
        texts = [self._fit_demos(q) for q in queries]
        return np.asarray(zero_prompt_logits(self.service, self.task, texts).argmax(-1), np.int64)


class InContextLearning:
    """k demonstrations (sampled per seed from the training rows, classes interleaved)
    before each input, each rendered with its label word in place of the mask."""

    name = "icl"
    kind: Kind = "black-box"

    def fit(self, ctx: CompareContext) -> Fitted:
        svc = ctx.service
        info = svc.model_info()
        task = ctx.task.for_kind(info.kind, info.id)
        rng = np.random.default_rng(ctx.seed)
        labelled = [e for e in ctx.train if e.label is not None]
        order = rng.permutation(len(labelled))
        chosen = [labelled[i] for i in order[: ctx.icl_demos]]
        demos = [_demo(task, ex) for ex in chosen]
        return Fitted(DemoPredictor(svc, task, demos), notes={"demos": len(demos)})


def filled(task: Task, ex: Example) -> str:
    """``ex`` rendered with its label word in place of the mask (a causal template: after
    the text), as a demonstration and as the text whose perplexity ``manual-ppl`` reads."""
    return _demo(task, ex)


def _demo(task: Task, ex: Example) -> str:
    assert ex.label is not None
    word = task.words[ex.label]
    if task.kind == "masked_lm":
        return task.render(ex.fields, word)
    return task.render(ex.fields, None) + word
