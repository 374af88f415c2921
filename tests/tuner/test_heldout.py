"""bbt.tuner.heldout: the report ``bbt eval --baseline`` prints, and the p0 it scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import RunError
from bbt.server.mock import MockBackend
from bbt.tuner import TunedPrompt, get_preset
from bbt.tuner.heldout import HeldOutComparison, initial_prompt


def test_report_puts_the_tuned_figures_first_and_says_the_gain() -> None:
    rep = HeldOutComparison(
        metric="accuracy",
        p0={"n": 200, "accuracy": 0.33, "f1": 0.3, "cross_entropy": 1.5},
        tuned={"n": 200, "accuracy": 0.605, "f1": 0.6, "cross_entropy": 1.0},
        calls=240,
        dev_calls=7,
    )
    assert rep.gain == pytest.approx(0.275)
    d = rep.as_dict()
    assert {k: d[k] for k in rep.tuned} == rep.tuned
    assert (d["p0"], d["calls"], d["dev_calls"]) == (rep.p0, 240, 7)
    assert rep.summary("test.tsv") == (
        "held-out accuracy on 200 rows of test.tsv: p0 33.0% -> tuned 60.5% (+27.5 points) "
        "after 240 API calls (+7 on dev)"
    )


def test_initial_prompt_needs_the_run_and_its_p0(tmp_path: Path) -> None:
    service = LocalClient(MockBackend(hidden_size=8))
    task = get_preset("sst2")
    prompt = np.zeros((3, 8), dtype=np.float32)
    with pytest.raises(RunError, match="run directory"):
        initial_prompt(TunedPrompt(prompt, task, "mock"), service)
    np.save(tmp_path / "p0.npy", np.zeros((4, 8), dtype=np.float32))
    tp = TunedPrompt(prompt, task, "mock", run_dir=tmp_path)
    with pytest.raises(RunError, match="not the same run"):
        initial_prompt(tp, service)
