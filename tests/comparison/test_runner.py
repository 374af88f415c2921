"""Splits, seeds and the token accounting, checked against what the mock counts."""

from __future__ import annotations

import pytest

from bbt.client import LocalClient
from bbt.comparison import CompareSettings, compare
from bbt.comparison.base import ComparisonError
from bbt.comparison.runner import held_out_split, score
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task

ALL = ["manual", "manual-select", "icl", "feature-lr", "feature-mlp", "bbt"]


def _mock_tokens(svc: LocalClient, task: Task, rows: list[Example], n_prompt: int) -> int:
    """Input tokens as the mock counts them: the text with its special tokens, plus the
    soft prompt, per sequence."""
    info = svc.model_info()
    texts = [task.render_for(info, e.fields) for e in rows]
    ids = svc.tokenize(texts, add_special_tokens=True).ids
    return sum(len(i) + n_prompt for i in ids)


def test_held_out_rows_are_kept_out_of_the_pool(rows: list[Example]) -> None:
    pool, held = held_out_split(rows, None, 10, seed=0)
    assert len(held) == 10
    assert len(pool) == 30
    assert not {id(e) for e in held} & {id(e) for e in pool}
    pool2, held2 = held_out_split(rows, rows[:5], 3, seed=0)
    assert pool2 == rows
    assert held2 == rows[:3]
    with pytest.raises(ComparisonError, match="leaves no rows"):
        held_out_split(rows, None, 40, seed=0)


def test_score_uses_the_task_metric(task: Task) -> None:
    import numpy as np

    assert score(task, np.array([0, 1, 1, 0]), np.array([0, 1, 0, 0])) == 0.75


def test_every_method_runs_and_its_tokens_match_the_mock(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    settings = CompareSettings(
        ALL, seeds=2, k_shot=2, budget=20, n_test=10, price_per_1k_tokens=0.5, n_tokens=4
    )
    comp = compare(mock_service, task, rows, settings)
    assert [(r.method, r.seed) for r in comp.runs] == [(m, s) for s in (0, 1) for m in ALL]
    _, held = held_out_split(rows, None, 10, 0)
    plain = _mock_tokens(mock_service, task, held, 0)
    for run in comp.runs:
        assert run.error is None
        assert run.metric is not None
        assert 0 <= run.metric <= 1
        assert run.fit.output_tokens == run.evaluation.output_tokens == 0
        assert run.cost == pytest.approx(run.fit.input_tokens / 1000 * 0.5)
        if run.method in ("manual", "manual-select", "feature-lr", "feature-mlp"):
            assert run.evaluation.input_tokens == plain
            assert run.evaluation.calls == 1
        if run.method == "bbt":
            assert run.evaluation.input_tokens == _mock_tokens(mock_service, task, held, 4)
        if run.method == "icl":
            assert run.evaluation.input_tokens > plain  # demonstrations cost tokens
    manual = [r for r in comp.runs if r.method == "manual"]
    assert all(r.fit.calls == 0 and r.fit.input_tokens == 0 for r in manual)


def test_fit_tokens_of_a_probe_match_the_mock(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    from bbt.tuner.data import sample_k_shot

    comp = compare(mock_service, task, rows, CompareSettings(["feature-lr"], 1, 2, n_test=10))
    pool, _ = held_out_split(rows, None, 10, 0)
    train, dev = sample_k_shot(pool, 2, 0, 2)
    assert comp.runs[0].fit.input_tokens == _mock_tokens(mock_service, task, train + dev, 0)


def test_a_failing_method_is_recorded_and_the_others_go_on(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    # The plain mock has no deep prompts: BBTv2 fails with the tuner's clear error.
    comp = compare(mock_service, task, rows, CompareSettings(["bbtv2", "manual"], 1, 2, n_test=8))
    bbtv2, manual = comp.runs
    assert bbtv2.metric is None
    assert bbtv2.error
    assert "deep" in bbtv2.error
    assert manual.metric is not None


def test_unknown_method_fails_before_any_call(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    with pytest.raises(ComparisonError, match="unknown method"):
        compare(mock_service, task, rows, CompareSettings(["manual", "nope"]))
    assert mock_service.usage.calls == 0
