"""``manual-ppl``: the lowest-perplexity template where the service scores texts (the causal
mock's toy LM, protocol 1.6), dev accuracy (and a note saying so) where it cannot."""

from __future__ import annotations

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.comparison import CompareSettings, compare
from bbt.comparison.base import CompareContext
from bbt.comparison.perplexity import FALLBACK, ManualPerplexity, template_perplexity
from bbt.comparison.plan import mean_tokens, plan_method
from bbt.comparison.prompting import ManualSelect, TemplatePredictor, filled, served_variants
from bbt.comparison.report import markdown
from bbt.server.mock import MockBackend
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


@pytest.fixture
def causal_service() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=16, causal=True))


@pytest.fixture
def task() -> Task:
    """A two-class task in the mock's words, for a masked and a causal model."""
    return Task(
        name="mock-sentiment",
        template="{sentence} It was {mask} .",
        labels=("negative", "positive"),
        words=("bad", "great"),
        causal_template="{sentence} It was",
        causal_words=(" bad", " great"),
    )


def _ctx(svc: LocalClient, task: Task, rows: list[Example]) -> CompareContext:
    return CompareContext(svc, task, rows[:8], rows[8:16], 0, budget=20)


def test_the_lowest_perplexity_template_wins_for_one_score_call_each(
    causal_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    backend = causal_service._backend
    assert isinstance(backend, MockBackend)
    ctx = _ctx(causal_service, task, rows)
    before = causal_service.usage.copy()
    fitted = ManualPerplexity().fit(ctx)
    spent = causal_service.usage - before
    variants = served_variants(task, causal_service)
    assert len({v.template for v in variants}) == len(variants) >= 3
    # By hand: exp of the mean per-token NLL of the filled training rows, per template.
    want = {}
    tokens = 0
    for v in variants:
        sums, counts, usage = backend.score([filled(v, e) for e in ctx.train])
        nll = [-s / c for s, c in zip(sums, counts, strict=True) if c]
        want[v.template] = float(np.exp(np.mean(nll)))
        tokens += usage.tokens
    got = fitted.notes["perplexity"]
    assert got == pytest.approx(want, rel=1e-12)
    assert fitted.notes["selected_by"] == "perplexity"
    assert fitted.notes["template"] == min(want, key=lambda t: want[t])
    assert len(set(want.values())) > 1  # the templates differ, so the choice means something
    # One score call per template, no logits call, and the tokens the mock reported.
    assert (spent.calls, spent.requests, spent.tokens) == (len(variants), len(variants), tokens)
    predictor = fitted.predictor
    assert isinstance(predictor, TemplatePredictor)
    assert predictor.task.template == fitted.notes["template"]
    assert predictor.predict(rows[20:24]).shape == (4,)


def test_filled_rows_carry_their_label_word(causal_service: LocalClient, task: Task) -> None:
    causal = served_variants(task, causal_service)[0]
    assert filled(causal, Example({"sentence": "fun"}, 1)) == "fun It was great"
    assert template_perplexity(causal_service, causal, [Example({"sentence": "x"}, 0)]) > 1.0


def test_a_masked_model_falls_back_to_dev_accuracy_and_says_so(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    ctx = _ctx(mock_service, task, rows)
    fitted = ManualPerplexity().fit(ctx)
    assert fitted.notes["selected_by"] == "dev accuracy"
    assert fitted.notes["fallback"] == FALLBACK
    assert fitted.notes["template"] == ManualSelect().fit(ctx).notes["template"]
    comp = compare(mock_service, task, rows, CompareSettings(["manual-ppl"], 1, 2, n_test=10))
    assert f"manual-ppl: {FALLBACK}." in markdown(comp)


def test_the_dry_run_counts_its_calls(
    causal_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    settings = CompareSettings(["manual-ppl", "manual-select"], 1, 2, n_test=10)
    tok = mean_tokens(causal_service, task, rows)
    comp = compare(causal_service, task, rows, settings)
    for run in comp.runs:
        assert run.error is None
        plan = plan_method(run.method, settings, task.for_kind("causal_lm"), tok, 10)
        assert plan.calls == run.fit.calls
