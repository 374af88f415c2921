from __future__ import annotations

import numpy as np

from bbt.client import LocalClient
from bbt.comparison.base import CompareContext
from bbt.comparison.prompting import (
    DemoPredictor,
    InContextLearning,
    ManualPrompt,
    ManualSelect,
    template_variants,
    zero_prompt_logits,
)
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task, verbalizer_ids


def _ctx(svc: LocalClient, task: Task, rows: list[Example], seed: int = 0) -> CompareContext:
    return CompareContext(svc, task, rows[:8], rows[8:16], seed, budget=20, icl_demos=4)


def test_manual_spends_nothing_to_fit_and_predicts_the_argmax_of_the_empty_prompt(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    before = mock_service.usage.copy()
    fitted = ManualPrompt().fit(_ctx(mock_service, task, rows))
    assert (mock_service.usage - before).calls == 0
    pred = fitted.predictor.predict(rows[20:30])
    info = mock_service.model_info()
    texts = [task.render_for(info, e.fields) for e in rows[20:30]]
    logits = zero_prompt_logits(mock_service, task, texts, verbalizer_ids(task, mock_service))
    assert np.array_equal(pred, logits.argmax(-1))
    assert fitted.predictor.predict([]).shape == (0,)


def test_template_variants_keep_fields_and_words(task: Task) -> None:
    variants = template_variants(task)
    assert variants[0] is task
    assert len({v.template for v in variants}) == len(variants) >= 3
    assert all(v.fields == task.fields and v.words == task.words for v in variants)


def test_manual_select_keeps_the_template_with_the_best_dev_score(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    ctx = _ctx(mock_service, task, rows)
    before = mock_service.usage.copy()
    fitted = ManualSelect().fit(ctx)
    scores = fitted.notes["dev_scores"]
    assert (mock_service.usage - before).calls == len(scores) == len(template_variants(task))
    assert scores[fitted.notes["template"]] == max(scores.values())


def test_icl_puts_labelled_demonstrations_before_the_query(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    fitted = InContextLearning().fit(_ctx(mock_service, task, rows))
    predictor = fitted.predictor
    assert isinstance(predictor, DemoPredictor)
    assert len(predictor.demos) == 4
    for demo in predictor.demos:
        assert "[MASK]" not in demo
        assert "great" in demo or "bad" in demo
    other = InContextLearning().fit(_ctx(mock_service, task, rows, seed=1)).predictor
    assert isinstance(other, DemoPredictor)
    assert other.demos != predictor.demos
    assert predictor.predict(rows[20:24]).shape == (4,)


def test_icl_drops_demonstrations_that_do_not_fit(task: Task, rows: list[Example]) -> None:
    from bbt.server.mock import MockBackend

    svc = LocalClient(MockBackend(hidden_size=16, max_sequence_length=40))
    predictor = DemoPredictor(svc, task, ["a long demonstration text here ." * 3] * 5)
    text = predictor._fit_demos("short . It was [MASK] .")
    assert len(svc.tokenize([text]).ids[0]) <= 40
    assert predictor.predict(rows[:2]).shape == (2,)


def test_a_causal_model_gets_causal_rewrites_not_one_template_five_times(task: Task) -> None:
    from bbt.comparison.prompting import served_variants
    from bbt.server.mock import MockBackend

    svc = LocalClient(MockBackend(hidden_size=16, causal=True))
    variants = served_variants(task, svc)
    assert variants[0] == task.for_kind("causal_lm")
    assert len({v.template for v in variants}) == len(variants) >= 3
    assert all(v.kind == "causal_lm" and "{mask}" not in v.template for v in variants)


def test_manual_notes_the_template_the_model_is_sent(task: Task) -> None:
    from bbt.server.mock import MockBackend

    svc = LocalClient(MockBackend(hidden_size=16, causal=True))
    rows = [Example({"sentence": "fun"}, 1)]
    fitted = ManualPrompt().fit(CompareContext(svc, task, rows, rows, 0, budget=1))
    assert fitted.notes["template"] == task.causal_template
