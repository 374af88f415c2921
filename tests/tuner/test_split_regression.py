"""The optimiser/evaluator split changes no result: fixed-seed mock runs reproduce, bit for
bit, the histories recorded with the Tuner before the split (tests/tuner/data/golden_runs.json,
float fields as float.hex()), and a run directory that Tuner checkpointed still resumes.

The goldens are bitwise, so they run under the kernels that recorded them
(:mod:`tests.tuner.kernels`).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.server.mock import MockBackend
from bbt.tuner import Example, GenerationRecord, Task, TuneConfig, Tuner, resume

from .conftest import H
from .kernels import outside_pinned, pinned_only, run_pinned

DATA = Path(__file__).parent / "data"


@outside_pinned
def test_goldens_under_the_recording_kernels() -> None:
    run_pinned(
        [
            f"{__file__}::test_fixed_seed_run_reproduces_the_pre_split_history",
            f"{__file__}::test_a_run_checkpointed_before_the_split_resumes_to_the_same_result",
        ]
    )


GOLDEN: dict[str, Any] = json.loads((DATA / "golden_runs.json").read_text())
Split = tuple[list[Example], list[Example]]


def _hex(v: Any) -> Any:
    return float(v).hex() if isinstance(v, float) else v


def _sha(a: np.ndarray[Any, Any]) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


@pinned_only
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_fixed_seed_run_reproduces_the_pre_split_history(
    case: str, mock_task: Task, split: Split
) -> None:
    gold = GOLDEN[case]
    history: list[dict[str, Any]] = []

    def record(rec: GenerationRecord) -> None:
        history.append({k: _hex(v) for k, v in rec.as_dict().items() if k != "wall_time"})

    service = LocalClient(MockBackend(hidden_size=H))
    tuner = Tuner(service, mock_task, *split, TuneConfig(**gold["config"]), callbacks=[record])
    sel = tuner.run()
    assert history == gold["history"]
    assert _sha(np.asarray(sel.z, dtype=np.float64)) == gold["selected"]["z_sha256"]
    prompt = tuner.prompts(np.asarray(sel.z)[None])[0]
    assert _sha(prompt) == gold["selected"]["prompt_sha256"]
    assert (sel.calls, sel.source) == (gold["selected"]["calls"], gold["selected"]["source"])
    assert (tuner.calls, tuner.dev_calls, tuner.stop_reason) == (
        gold["calls"],
        gold["dev_calls"],
        gold["stop_reason"],
    )


@pinned_only
def test_a_run_checkpointed_before_the_split_resumes_to_the_same_result(tmp_path: Path) -> None:
    """tests/tuner/data/legacy_run: the "csa" golden case, interrupted after generation 7 by
    the pre-split code. Its checkpoint is sealed under another user's key, hence the trust."""
    run = tmp_path / "run"
    shutil.copytree(DATA / "legacy_run", run)
    res = resume(run, LocalClient(MockBackend(hidden_size=H)), plot=False, trust_checkpoint=True)
    gold = GOLDEN["csa"]
    assert _sha(np.asarray(res.z, dtype=np.float64)) == gold["selected"]["z_sha256"]
    assert (res.calls, res.dev_calls) == (gold["calls"], gold["dev_calls"])
    lines = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in lines] == list(range(1, 21))
    assert [float(x["loss_min"]).hex() for x in lines] == [g["loss_min"] for g in gold["history"]]
