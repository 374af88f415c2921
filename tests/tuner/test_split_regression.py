"""The optimiser/evaluator split changes no result: fixed-seed mock runs reproduce, bit for
bit, the histories recorded with the Tuner before the split (tests/tuner/data/golden_runs.json,
float fields as float.hex()), and a run directory that Tuner checkpointed still resumes.

The goldens are bitwise, so they run under the kernels that recorded them
(:mod:`tests.tuner.kernels`): on an AVX-512 CPU the pre-split goldens above, on an AVX2-only
one ``golden_runs.haswell.json``, the same cases recorded later (``record_goldens.py``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.server.mock import MockBackend
from bbt.tuner import Task, resume

from .goldens import DATA, H, Split, golden_path, run_case, sha
from .kernels import SKYLAKEX, active_kernels, outside_pinned, pinned_only, run_pinned


@outside_pinned
def test_goldens_under_the_recording_kernels() -> None:
    run_pinned([f"{__file__}::test_fixed_seed_run_reproduces_the_pre_split_history"])


@outside_pinned
def test_the_pre_split_checkpoint_under_the_kernels_that_wrote_it() -> None:
    run_pinned(
        [f"{__file__}::test_a_run_checkpointed_before_the_split_resumes_to_the_same_result"],
        only=SKYLAKEX,
    )


GOLDEN: dict[str, Any] = json.loads(golden_path(active_kernels()).read_text())


@pinned_only
@pytest.mark.parametrize("case", sorted(GOLDEN))
def test_fixed_seed_run_reproduces_the_pre_split_history(
    case: str, mock_task: Task, split: Split
) -> None:
    gold = GOLDEN[case]
    got = run_case(gold["config"], mock_task, split)
    assert got["history"] == gold["history"]
    assert got["selected"] == gold["selected"]
    assert (got["calls"], got["dev_calls"], got["stop_reason"]) == (
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
    assert sha(np.asarray(res.z, dtype=np.float64)) == gold["selected"]["z_sha256"]
    assert (res.calls, res.dev_calls) == (gold["calls"], gold["dev_calls"])
    lines = [json.loads(x) for x in (run / "history.jsonl").read_text().splitlines()]
    assert [x["generation"] for x in lines] == list(range(1, 21))
    assert [float(x["loss_min"]).hex() for x in lines] == [g["loss_min"] for g in gold["history"]]
