from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.comparison.base import CompareContext, ComparisonError
from bbt.comparison.tuned import BBT, BBTPretrained, BBTv2
from bbt.errors import ConfigurationError
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


def test_bbt_pretrained_starts_from_the_run_it_is_given(
    mock_service: LocalClient,
    task: Task,
    rows: list[Example],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The row tunes from the source run's prompt (``--init run:DIR``, checked as
    ``bbt tune`` checks it); without a source the row is refused before any call."""
    import bbt.comparison.tuned as tuned_module
    from bbt.tuner.config import TuneConfig
    from bbt.tuner.run import tune

    source = tmp_path / "source"
    tune(
        mock_service, task, rows[:8], rows[8:16],
        TuneConfig(budget=40, n_tokens=5, seed=3), run_dir=source, plot=False,
    )  # fmt: skip
    seen: list[Any] = []

    build = tuned_module.build_tuner

    def spy(*args: Any, **kwargs: Any) -> Any:
        tuner = build(*args, **kwargs)
        seen.append((kwargs["initial_prompt"], tuner))
        return tuner

    monkeypatch.setattr(tuned_module, "build_tuner", spy)
    ctx = CompareContext(
        mock_service, task, rows[:8], rows[8:16], 0, budget=20, n_tokens=5,
        init=f"run:{source}",
    )  # fmt: skip
    fitted = BBTPretrained().fit(ctx)
    assert fitted.notes["init"] == f"run:{source}"
    assert fitted.notes["tuning_calls"] <= 20
    (init, _) = seen[0]
    assert init.kind == "run"  # loaded and checked by the tuner (tests/tuner/test_transfer.py)
    assert init.path == str(source)

    before = mock_service.usage.copy()
    bare = CompareContext(mock_service, task, rows[:8], rows[8:16], 0, budget=20, n_tokens=5)
    with pytest.raises(ComparisonError, match="needs --init run:DIR"):
        BBTPretrained().fit(bare)
    assert (mock_service.usage - before).calls == 0


def test_bbt_pretrained_starts_from_a_registry_prompt(
    task: Task, rows: list[Example], tmp_path: Path
) -> None:
    """``--init prompt:ID``: the row's p0 is the shared prompt, fetched through the client."""
    from bbt.server.mock import MockBackend
    from bbt.server.registry import PromptRegistry
    from bbt.server.shared_prompts import publish
    from bbt.tuner.config import TuneConfig
    from bbt.tuner.run import tune
    from bbt.tuner.transfer import publication

    registry = PromptRegistry(tmp_path / "r.sqlite3")
    service = LocalClient(MockBackend(hidden_size=16), registry=registry)
    source = tmp_path / "source"
    tune(
        service, task, rows[:8], rows[8:16],
        TuneConfig(budget=40, n_tokens=5, seed=3), run_dir=source, plot=False,
    )  # fmt: skip
    prompt, model, meta = publication(str(source))
    shared = publish(registry, prompt, model=model, metadata=meta)[0].id
    ctx = CompareContext(
        service, task, rows[:8], rows[8:16], 0, budget=20, n_tokens=5, init=f"prompt:{shared}"
    )
    fitted = BBTPretrained().fit(ctx)
    assert fitted.notes["init"] == f"prompt:{shared}"
    assert fitted.notes["tuning_calls"] <= 20
    wrong = CompareContext(
        service, task, rows[:8], rows[8:16], 0, budget=20, n_tokens=4, init=f"prompt:{shared}"
    )
    with pytest.raises(ConfigurationError, match="--n-tokens 5"):
        BBTPretrained().fit(wrong)
    registry.close()
