"""NaN or inf from the service neither crashes a run nor breaks its exact resume
(issue 8, defect 5)."""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient, UsageStats
from bbt.protocol import ModelInfo, TokenizeResponse
from bbt.server.mock import MockBackend
from bbt.tuner import Example, Task, Tuner, read_manifest, resume, tune
from bbt.tuner.run import HISTORY
from bbt.tuner.tuner import NONFINITE_PENALTY

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]


class FlakyLogits:
    """The mock model, except that some prompts (chosen by a hash of their bytes, so the same
    prompt always gets the same answer) come back with NaN logits or an inf among them."""

    def __init__(self) -> None:
        self.inner = LocalClient(MockBackend(hidden_size=H))
        self.bad = 0

    @property
    def usage(self) -> UsageStats:
        return self.inner.usage

    def model_info(self) -> ModelInfo:
        return self.inner.model_info()

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        return self.inner.tokenize(texts, add_special_tokens)

    def embed(self, token_ids: Sequence[int]) -> np.ndarray[Any, np.dtype[np.float32]]:
        return self.inner.embed(token_ids)

    def logits(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        out = self.inner.logits(prompts, texts, candidate_ids).copy()
        for p in range(out.shape[0]):
            h = zlib.crc32(np.ascontiguousarray(prompts[p]).tobytes()) % 5
            if h == 0:
                out[p] = np.nan
                self.bad += 1
            elif h == 1:
                out[p, 0, 0] = np.inf
                self.bad += 1
        return out


def test_tell_ranks_non_finite_losses_last(
    service: LocalClient, mock_task: Task, split: Split, caplog: pytest.LogCaptureFixture
) -> None:
    tuner = Tuner(service, mock_task, *split, small_config(popsize=6, eval_every=1000))
    pop = tuner.ask()
    rec = tuner.tell([np.nan, 3.0, np.inf, 1.0, -np.inf, 2.0])
    assert rec.nonfinite == 3
    assert (rec.loss_min, rec.loss_max) == (1.0, 3.0)  # -inf is not a best: it is the worst
    assert tuner.best is not None
    assert np.array_equal(tuner.best.z, pop[3])
    assert tuner.best.train_loss == 1.0
    assert "3 of 6 candidates scored NaN/inf" in caplog.text

    tuner.ask()
    rec = tuner.tell([np.nan] * 6)  # nothing finite: the fixed penalty, best unchanged
    assert rec.nonfinite == 6
    assert rec.loss_min == rec.loss_max == NONFINITE_PENALTY
    assert tuner.best.train_loss == 1.0
    assert caplog.text.count("scored NaN/inf") == 1  # logged once


def test_a_generation_of_only_non_finite_losses_leaves_no_best(
    service: LocalClient, mock_task: Task, split: Split
) -> None:
    tuner = Tuner(service, mock_task, *split, small_config(popsize=4, eval_initial=False))
    tuner.ask()
    rec = tuner.tell([np.nan] * 4)
    assert tuner.best is None
    assert np.isnan(rec.best_loss)


def test_a_service_returning_nan_and_inf_finishes_and_resumes_bitwise(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    cfg = small_config(budget=120, eval_every=16)
    flaky = FlakyLogits()
    full = tune(flaky, mock_task, *split, cfg, run_dir=tmp_path / "full")
    assert flaky.bad > 0
    rows = [json.loads(x) for x in (tmp_path / "full" / HISTORY).read_text().splitlines()]
    assert sum(r["nonfinite"] for r in rows) > 0
    assert all(np.isfinite(r["loss_max"]) for r in rows)
    assert full.dev_metric is not None
    assert np.isfinite(full.dev_metric)
    assert read_manifest(tmp_path / "full")["status"] == "completed"

    def stop(rec: Any) -> None:
        if rec.generation >= 6:
            raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tune(FlakyLogits(), mock_task, *split, cfg, run_dir=run, callbacks=[stop])
    res = resume(run, FlakyLogits())
    assert res.z.tobytes() == full.z.tobytes()
    assert res.metrics == full.metrics
    strip = lambda p: [  # noqa: E731
        {k: v for k, v in json.loads(x).items() if k != "wall_time"}
        for x in (p / HISTORY).read_text().splitlines()
    ]
    assert strip(run) == strip(tmp_path / "full")


def test_a_non_finite_dev_score_is_never_selected(
    monkeypatch: pytest.MonkeyPatch, service: LocalClient, mock_task: Task, split: Split
) -> None:
    tuner = Tuner(service, mock_task, *split, small_config(popsize=4, eval_every=4))
    real = service.logits

    def nan_logits(prompts: Any, texts: Sequence[str], ids: Sequence[int]) -> Any:
        out = real(prompts, texts, ids)
        return np.full_like(out, np.nan) if len(prompts) == 1 else out  # dev calls only

    monkeypatch.setattr(service, "logits", nan_logits)
    tuner.start()
    assert tuner.initial_dev_metric == -np.inf
    assert tuner.selected is None  # p0's non-finite score is not a selection
    rec = tuner.step()
    assert rec.dev_metric == -np.inf
    assert tuner.selected is None
    monkeypatch.setattr(service, "logits", real)
    rec = tuner.step()
    assert rec.dev_metric is not None
    assert np.isfinite(rec.dev_metric)
    assert tuner.selected is not None
    assert tuner.selected.dev_metric == rec.dev_metric
