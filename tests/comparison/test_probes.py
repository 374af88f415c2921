from __future__ import annotations

import sys

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.comparison.base import CompareContext, ComparisonError
from bbt.comparison.probes import LogisticProbe, MLPProbe, features_of
from bbt.server.mock import MockBackend
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


@pytest.mark.parametrize("probe", [LogisticProbe(), MLPProbe()])
def test_probe_fits_on_train_and_dev_features_in_one_call(
    probe: LogisticProbe | MLPProbe, mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    ctx = CompareContext(mock_service, task, rows[:8], rows[8:16], 0, budget=1)
    before = mock_service.usage.copy()
    fitted = probe.fit(ctx)
    spent = mock_service.usage - before
    assert spent.calls == 1
    assert fitted.notes["rows"] == 16
    pred = fitted.predictor.predict(rows[20:40])
    # The fitted model itself, on the features of the same rows, agrees with the predictor.
    x = features_of(mock_service, task, rows[20:40])
    assert np.array_equal(pred, fitted.predictor.model.predict(x))  # type: ignore[attr-defined]
    assert set(pred.tolist()) <= {0, 1}


def test_probe_without_the_features_capability_is_refused(task: Task, rows: list[Example]) -> None:
    svc = LocalClient(MockBackend(hidden_size=16, features=False))
    ctx = CompareContext(svc, task, rows[:8], rows[8:16], 0, budget=1)
    with pytest.raises(ComparisonError, match="features operation"):
        LogisticProbe().fit(ctx)


def test_probe_without_sklearn_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, mock_service: LocalClient, task: Task, rows: list[Example]
) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    ctx = CompareContext(mock_service, task, rows[:8], rows[8:16], 0, budget=1)
    with pytest.raises(ComparisonError, match=r"bbt\[compare\]"):
        MLPProbe().fit(ctx)
