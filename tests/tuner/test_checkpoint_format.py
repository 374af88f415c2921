"""Checkpoint format 3 (JSON + npz, no pickle) and the legacy reader: run directories that
bbt wrote before issue 19 (BBTCKPT2 pickles) resume exactly and are rewritten in format 3."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import RunError
from bbt.server.mock import MockBackend
from bbt.tuner import Example, Task, TuneConfig, read_manifest, resume, tune
from bbt.tuner import checkpoint as ckpt
from bbt.tuner.run import CHECKPOINT, load_checkpoint

from .conftest import H, small_config
from .kernels import SKYLAKEX, outside_pinned, pinned_only, run_pinned
from .test_checkpoint import _no_unpickling, _stop_after

Split = tuple[list[Example], list[Example]]
OLD_RUNS = Path(__file__).parent / "data" / "f05a715_runs"


def _svc(layers: int = 1) -> LocalClient:
    """The mock; with ``layers`` > 1, one that serves deep prompts (BBTv2)."""
    if layers > 1:
        return LocalClient(MockBackend(hidden_size=H, num_layers=layers))
    return LocalClient(MockBackend(hidden_size=H))


@pytest.mark.parametrize("method", ["bbt", "bbtv2"])
def test_a_format_3_checkpoint_resumes_exactly_without_unpickling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_task: Task, split: Split, method: str
) -> None:
    layers = 4 if method == "bbtv2" else 1
    cfg = small_config(budget=120, eval_mean=True, method=method)
    full = tune(_svc(layers), mock_task, *split, cfg, run_dir=tmp_path / "full")
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tune(_svc(layers), mock_task, *split, cfg, run_dir=run, callbacks=[_stop_after(5)])
    data = (run / CHECKPOINT).read_bytes()
    assert data.startswith(ckpt.MAGIC)
    assert pickle.PROTO not in data[len(ckpt.MAGIC) + 32 :][:2]  # a zip archive, not a pickle
    _no_unpickling(monkeypatch)
    res = resume(run, _svc(layers))
    assert res.z.tobytes() == full.z.tobytes()
    assert (run / "history.jsonl").read_bytes().count(b"\n") == full.generations


def test_another_users_format_3_checkpoint_loads_when_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_task: Task, split: Split
) -> None:
    """With trust a foreign format-3 checkpoint is data only: it loads, and nothing is
    unpickled."""
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        tune(_svc(), mock_task, *split, small_config(), run_dir=run, callbacks=[_stop_after(2)])
    monkeypatch.setenv("BBT_HOME", str(tmp_path / "someone-else"))
    with pytest.raises(RunError, match="another user or machine") as info:
        load_checkpoint(run)
    assert "could run code" not in str(info.value)
    _no_unpickling(monkeypatch)
    data = load_checkpoint(run, trust=True)
    assert data is not None
    assert data["generation"] == 1  # the interrupted 2nd generation never checkpointed


def test_the_payload_holds_no_object_arrays_and_no_stray_types() -> None:
    with pytest.raises(ValueError, match="data only"):
        ckpt.encode_payload({"x": object()})
    with pytest.raises(ValueError, match="no object arrays"):
        ckpt.encode_payload({"x": np.array([object()])})
    with pytest.raises(ValueError, match="damaged"):
        ckpt.decode_payload(b"PK not really a zip")
    back = ckpt.decode_payload(ckpt.encode_payload({"a": [1, 2.5, float("inf"), None, "s"]}))
    assert back == {"a": [1, 2.5, float("inf"), None, "s"]}


# --------------------------------------------------------------------------- legacy runs

CASES = {
    # name: (config of tests/tuner/data/f05a715_runs/make.py, layers of the mock)
    "bbt": (
        {"n_tokens": 5, "dim": 20, "popsize": 8, "seed": 3, "budget": 160, "eval_every": 40}
        | {"eval_mean": True},
        1,
    ),
    "bbt_bounded": (
        {"n_tokens": 5, "dim": 12, "popsize": 6, "seed": 3, "budget": 120, "eval_every": 24}
        | {"bound": 2.0},
        1,
    ),
    "bbtv2": (
        {"n_tokens": 5, "dim": 20, "popsize": 8, "seed": 3, "budget": 120, "eval_every": 16}
        | {"method": "bbtv2"},
        4,
    ),
}


@outside_pinned
def test_old_runs_under_the_recording_kernels() -> None:
    # The old runs were checkpointed on an AVX-512 machine: only its kernels continue them
    # to the bits an uninterrupted run of today's code reaches there.
    run_pinned([f"{__file__}::test_a_run_written_before_issue_19_resumes_exactly"], only=SKYLAKEX)


@pinned_only
@pytest.mark.parametrize("case", sorted(CASES))
def test_a_run_written_before_issue_19_resumes_exactly(
    case: str, tmp_path: Path, mock_task: Task, split: Split
) -> None:
    """The old run (its checkpoint a BBTCKPT2 pickle under another user's key) resumes under
    --trust-checkpoint to what an uninterrupted run of today's code selects, and its
    checkpoint is format 3 from then on."""
    cfg, layers = CASES[case]
    full = tune(_svc(layers), mock_task, *split, TuneConfig(**cfg), run_dir=tmp_path / "full")
    run = tmp_path / "run"
    shutil.copytree(OLD_RUNS / case, run)
    assert (run / CHECKPOINT).read_bytes().startswith(ckpt.LEGACY_MAGIC)
    assert TuneConfig.from_dict(read_manifest(run)["config"]) == TuneConfig(**cfg)
    with pytest.raises(RunError, match="could run code"):
        resume(run, _svc(layers))
    res = resume(run, _svc(layers), plot=False, trust_checkpoint=True)
    assert res.z.tobytes() == full.z.tobytes()
    assert (res.calls, res.dev_calls, res.generations) == (
        full.calls,
        full.dev_calls,
        full.generations,
    )
    assert (run / "history.jsonl").read_text().count("\n") == full.generations
    assert (run / CHECKPOINT).read_bytes().startswith(ckpt.MAGIC)


def test_a_legacy_checkpoint_under_this_users_key_loads_without_trust(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    """A BBTCKPT2 file sealed under this user's key is as trusted as it was before issue 19:
    the legacy reader converts it without --trust-checkpoint."""
    run = tmp_path / "run"
    shutil.copytree(OLD_RUNS / "bbt", run)
    manifest = read_manifest(run)
    data = (run / CHECKPOINT).read_bytes()
    payload = data[len(ckpt.LEGACY_MAGIC) + 32 :]
    key = ckpt.load_key()
    tag = ckpt._tag(key, manifest["run_id"], payload, b"bbt-checkpoint/2\0")
    (run / CHECKPOINT).write_bytes(ckpt.LEGACY_MAGIC + tag + payload)
    converted = load_checkpoint(run)
    assert converted is not None
    assert converted["format"] == 3
    assert converted["generation"] == 4
    assert converted["tuner"]["optimizer_state"]["format"] == "bbt-cma/1"
