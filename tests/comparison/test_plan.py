"""The dry-run figures against what a run then spends on the mock."""

from __future__ import annotations

from bbt.client import LocalClient
from bbt.comparison import CompareSettings, compare
from bbt.comparison.plan import describe, mean_tokens, plan_method
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


def test_plan_matches_the_run_for_the_exact_methods(
    mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    methods = ["manual", "manual-select", "feature-lr", "bbt", "icl", "whitebox-lora"]
    settings = CompareSettings(methods[:4], 1, 2, budget=20, n_test=10, n_tokens=4)
    tok = mean_tokens(mock_service, task, rows)
    plans = {m: plan_method(m, settings, task, tok, 10) for m in methods}
    comp = compare(mock_service, task, rows, settings)
    got = {r.method: r for r in comp.runs}
    for m in ("manual", "manual-select", "feature-lr"):
        assert plans[m].calls == got[m].fit.calls
    assert plans["bbt"].calls >= got["bbt"].fit.calls  # an upper bound
    assert plans["whitebox-lora"].calls == 0
    assert plans["icl"].eval_tokens > plans["manual"].eval_tokens
    lines = describe(list(plans.values()), settings, tok)
    assert lines[0].startswith("dry run: 6 methods x 1 seeds")
    assert any("total" in line for line in lines)
    priced = CompareSettings(methods, price_per_1k_tokens=1.0)
    assert "cost at 1.0 per 1k tokens" in describe(list(plans.values()), priced, tok)[-1]
