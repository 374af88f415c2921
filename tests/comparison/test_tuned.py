from __future__ import annotations

import numpy as np

from bbt.client import LocalClient
from bbt.comparison.base import CompareContext
from bbt.comparison.tuned import BBT, BBTv2
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


def test_bbt_spends_the_budget_and_records_a_dev_curve(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    ctx = CompareContext(mock_service, task, rows[:8], rows[8:16], 0, budget=40, n_tokens=5)
    before = mock_service.usage.copy()
    fitted = BBT().fit(ctx)
    spent = mock_service.usage - before
    assert fitted.notes["tuning_calls"] <= 40
    assert spent.calls >= fitted.notes["tuning_calls"]  # plus the dev evaluations
    assert fitted.curve
    assert all(p.split == "dev" for p in fitted.curve)
    calls = [p.calls for p in fitted.curve]
    assert calls == sorted(calls)
    assert fitted.curve[-1].tokens <= spent.tokens
    pred = fitted.predictor.predict(rows[20:30])
    assert pred.shape == (10,)
    assert set(pred.tolist()) <= {0, 1}


def test_bbtv2_tunes_a_deep_prompt(
    deep_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    ctx = CompareContext(deep_service, task, rows[:8], rows[8:16], 1, budget=40, n_tokens=5)
    fitted = BBTv2().fit(ctx)
    prompt = fitted.predictor.prompt  # type: ignore[attr-defined]
    assert prompt.deep
    assert prompt.prompt.shape[0] == 2
    assert np.isin(fitted.predictor.predict(rows[20:24]), [0, 1]).all()
