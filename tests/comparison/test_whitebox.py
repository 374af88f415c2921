"""The white-box rows against ``bbt.whitebox``'s API, through a fake module."""

from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.comparison import CompareSettings, compare
from bbt.comparison.base import CompareContext, ComparisonError
from bbt.comparison.whitebox import WHITEBOX_NAMES, Whitebox
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


class _Result:
    steps = 7
    train_seconds = 0.5
    trainable_params = 1234

    def predict(self, examples: Sequence[Example]) -> np.ndarray[Any, Any]:
        return np.array([len(e.fields["sentence"]) % 2 for e in examples])


@pytest.fixture
def fake_whitebox(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []
    mod = types.ModuleType("bbt.whitebox")

    def train_whitebox(method: str, **kwargs: Any) -> _Result:
        calls.append({"method": method, **kwargs})
        return _Result()

    mod.train_whitebox = train_whitebox  # type: ignore[attr-defined]
    mod.WHITEBOX_METHODS = ("prompt-tuning", "p-tuning-v2", "lora")  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "bbt.whitebox", mod)
    return calls


@pytest.mark.parametrize("method", WHITEBOX_NAMES)
def test_whitebox_trains_on_train_and_dev_and_makes_no_api_call(
    method: str,
    fake_whitebox: list[dict[str, Any]],
    mock_service: LocalClient,
    task: Task,
    rows: list[Example],
) -> None:
    ctx = CompareContext(
        mock_service, task, rows[:8], rows[8:16], 3, budget=1, local_model="/models/x"
    )
    before = mock_service.usage.copy()
    fitted = Whitebox(method).fit(ctx)
    pred = fitted.predictor.predict(rows[20:24])
    assert (mock_service.usage - before).calls == 0
    (call,) = fake_whitebox
    assert call["method"] == method
    assert call["model_dir"] == "/models/x"
    assert call["seed"] == 3
    assert len(call["train"]) == 16
    assert call["task"] is task
    assert fitted.notes == {"steps": 7, "train_seconds": 0.5, "trainable_params": 1234}
    assert pred.tolist() == [len(e.fields["sentence"]) % 2 for e in rows[20:24]]


def test_embedded_model_passes_no_model_dir(
    fake_whitebox: list[dict[str, Any]], mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    ctx = CompareContext(mock_service, task, rows[:8], rows[8:16], 0, 1, local_model="embedded")
    Whitebox("lora").fit(ctx)
    assert fake_whitebox[0]["model_dir"] is None


def test_whitebox_needs_a_local_model(
    fake_whitebox: list[dict[str, Any]], mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    ctx = CompareContext(mock_service, task, rows[:8], rows[8:16], 0, budget=1)
    with pytest.raises(ComparisonError, match="weights on this machine"):
        Whitebox("lora").fit(ctx)
    with pytest.raises(ComparisonError, match="weights on this machine"):
        compare(mock_service, task, rows, CompareSettings(["manual", "whitebox-lora"], seeds=1))
    assert mock_service.usage.calls == 0  # refused before any call
    assert not fake_whitebox


def test_whitebox_without_the_module_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    monkeypatch.setitem(sys.modules, "bbt.whitebox", None)
    ctx = CompareContext(mock_service, task, rows[:8], rows[8:16], 0, 1, local_model="embedded")
    with pytest.raises(ComparisonError, match=r"bbt\[whitebox\]"):
        Whitebox("lora").fit(ctx)


def test_whitebox_runs_in_a_comparison_with_a_local_model(
    fake_whitebox: list[dict[str, Any]], mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    settings = CompareSettings(["whitebox-p-tuning-v2"], seeds=2, k_shot=2, n_test=10)
    settings.local_model = "embedded"
    comp = compare(mock_service, task, rows, settings)
    assert [r.kind for r in comp.runs] == ["white-box"] * 2
    assert all(r.metric is not None and r.fit.calls == 0 for r in comp.runs)
