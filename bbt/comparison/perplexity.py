"""``manual-ppl``: a choice among manual templates by perplexity, with no dev accuracy.

Where the service returns prompt log-probabilities (protocol 1.6, the ``"score"``
capability: a causal LM), each candidate template (:func:`served_variants`: the task's own
and the same generic rewrites ``manual-select`` tries) is filled with every labelled
training row and its gold label word, as a demonstration would be. The template's
perplexity is ``exp`` of the mean, over those rows, of each text's per-token negative
log-likelihood; the lowest wins. This follows the idea that a prompt the model finds
likely is one it understands (Gonen et al., 2022, "Demystifying Prompts in Language Models
via Perplexity"), here with the label words filled in so that the template's wording around
them is judged too. One score call per template, no logits call: the choice spends no dev
rows.

A service without the capability (a masked LM, a server older than 1.6) falls back to dev
accuracy, as ``manual-select`` chooses, and says so in the run's notes (``selected_by``,
``fallback``) and in the table's footnote.
"""

from __future__ import annotations

import math

import numpy as np

from bbt.client.service import ScoreService, offers_score
from bbt.comparison.base import CompareContext, Fitted, Kind
from bbt.comparison.prompting import ManualSelect, TemplatePredictor, filled, served_variants
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task

#: What the notes say when the service cannot score texts.
FALLBACK = (
    "the service returns no prompt log-probabilities (no 'score' capability: a masked LM "
    "or a server older than protocol 1.6), so the template was chosen by dev accuracy"
)


def template_perplexity(service: ScoreService, task: Task, rows: list[Example]) -> float:
    """``exp`` of the mean per-token negative log-likelihood of ``rows`` filled into
    ``task``'s template with their label words (rows with no scored token left out)."""
    scores = service.score([filled(task, ex) for ex in rows])
    counts = np.asarray(scores.token_counts)
    keep = counts > 0
    if not keep.any():
        return math.inf
    nll = -np.asarray(scores.logprobs)[keep] / counts[keep]
    return float(np.exp(nll.mean()))


class ManualPerplexity:
    """Several manual templates; the one with the lowest perplexity on the training rows
    (filled with their label words) is kept. Dev accuracy decides when the service cannot
    score texts."""

    name = "manual-ppl"
    kind: Kind = "black-box"

    def fit(self, ctx: CompareContext) -> Fitted:
        svc = ctx.service
        if not offers_score(svc):
            fitted = ManualSelect().fit(ctx)
            fitted.notes.update(selected_by="dev accuracy", fallback=FALLBACK)
            return fitted
        assert isinstance(svc, ScoreService)  # offers_score checked it
        rows = [e for e in ctx.train if e.label is not None]
        variants = served_variants(ctx.task, svc)
        ppl = [template_perplexity(svc, v, rows) for v in variants]
        best = int(np.argmin(ppl))
        return Fitted(
            TemplatePredictor(svc, variants[best]),
            notes={
                "template": variants[best].template,
                "selected_by": "perplexity",
                "perplexity": {v.template: p for v, p in zip(variants, ppl, strict=True)},
            },
        )
