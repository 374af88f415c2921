"""Resuming never unpickles a checkpoint this user's machine did not write (issue 8, defect 2)."""

from __future__ import annotations

import json
import os
import pickle
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import RunError
from bbt.server.mock import MockBackend
from bbt.tuner import Example, Task, TunedPrompt, load_result, read_manifest, resume, tune
from bbt.tuner import checkpoint as ckpt
from bbt.tuner.run import CHECKPOINT, HISTORY, LEGACY_CHECKPOINT, load_checkpoint

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]


def _svc() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=H))


def _stop_after(gens: int) -> Any:
    def cb(rec: Any) -> None:
        if rec.generation >= gens:
            raise KeyboardInterrupt

    return cb


def _interrupted(path: Path, task: Task, split: Split, gens: int = 3) -> Path:
    with pytest.raises(KeyboardInterrupt):
        tune(
            _svc(),
            task,
            *split,
            small_config(budget=80),
            run_dir=path,
            callbacks=[_stop_after(gens)],
        )
    return path


class _Marker:
    """Unpickling this creates a file: the harmless stand-in for arbitrary code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def test_the_key_lives_outside_the_run_and_is_private(
    tmp_path: Path, checkpoint_key_home: Path, mock_task: Task, split: Split
) -> None:
    run = tmp_path / "run"
    tune(_svc(), mock_task, *split, small_config(budget=16), run_dir=run)
    key_file = checkpoint_key_home / ckpt.KEY_FILE
    assert ckpt.key_path() == key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    key = ckpt.load_key()
    assert len(key) == 32
    assert (run / CHECKPOINT).read_bytes().startswith(ckpt.MAGIC)
    for f in run.iterdir():
        data = f.read_bytes()
        assert key not in data, f.name
        assert key.hex().encode() not in data, f.name


def test_key_path_honours_xdg_config_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("BBT_HOME")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert ckpt.key_path() == tmp_path / "xdg" / "bbt" / "checkpoint.key"
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert ckpt.key_path() == tmp_path / "home" / ".config" / "bbt" / "checkpoint.key"


def test_a_malicious_legacy_pickle_is_refused_and_never_runs(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    run = _interrupted(tmp_path / "run", mock_task, split)
    marker = tmp_path / "pwned"
    (run / CHECKPOINT).unlink()
    (run / LEGACY_CHECKPOINT).write_bytes(pickle.dumps({"format": 1, "x": _Marker(marker)}))
    with pytest.raises(RunError, match="--trust-checkpoint") as info:
        resume(run, _svc())
    assert "unauthenticated" in str(info.value)
    assert "\n" not in str(info.value)
    assert not marker.exists()


def test_a_forged_or_tampered_checkpoint_is_refused_and_never_runs(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    run = _interrupted(tmp_path / "run", mock_task, split)
    marker = tmp_path / "pwned"
    evil = pickle.dumps({"format": 2, "x": _Marker(marker)})
    # The right header with a made-up tag, and a tag made under another key.
    for forged in (
        ckpt.MAGIC + b"\0" * 32 + evil,
        ckpt.seal(evil, read_manifest(run)["run_id"], os.urandom(32)),
    ):
        (run / CHECKPOINT).write_bytes(forged)
        with pytest.raises(RunError, match="not written by bbt under this user's key"):
            resume(run, _svc())
        assert not marker.exists()
    (run / CHECKPOINT).write_bytes(evil)  # no header at all
    with pytest.raises(RunError, match="not a bbt checkpoint"):
        resume(run, _svc())
    assert not marker.exists()


def test_a_genuine_checkpoint_edited_by_one_byte_is_refused(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    run = _interrupted(tmp_path / "run", mock_task, split)
    data = bytearray((run / CHECKPOINT).read_bytes())
    data[-5] ^= 1
    (run / CHECKPOINT).write_bytes(bytes(data))
    with pytest.raises(RunError, match="refusing to load"):
        resume(run, _svc())


def test_a_checkpoint_from_another_run_is_refused(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    a = _interrupted(tmp_path / "a", mock_task, split)
    b = _interrupted(tmp_path / "b", mock_task, split)
    (b / CHECKPOINT).write_bytes((a / CHECKPOINT).read_bytes())  # same key, other run id
    with pytest.raises(RunError, match="refusing to load"):
        resume(b, _svc())


def test_another_users_checkpoint_is_refused_unless_trusted(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    mock_task: Task,
    split: Split,
) -> None:
    cfg = small_config(budget=80)
    full = tune(_svc(), mock_task, *split, cfg, run_dir=tmp_path / "full")
    run = _interrupted(tmp_path / "run", mock_task, split)
    monkeypatch.setenv("BBT_HOME", str(tmp_path / "someone-else"))
    with pytest.raises(RunError, match="another user or machine"):
        resume(run, _svc())
    res = resume(run, _svc(), trust_checkpoint=True)
    assert "trusted explicitly" in caplog.text
    assert res.z.tobytes() == full.z.tobytes()
    # From then on the checkpoints are this user's: a plain resume reads them.
    assert load_checkpoint(run) is not None


def test_a_legacy_checkpoint_resumes_exactly_when_trusted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mock_task: Task, split: Split
) -> None:
    cfg = small_config(budget=80)
    full = tune(_svc(), mock_task, *split, cfg, run_dir=tmp_path / "full")
    run = _interrupted(tmp_path / "run", mock_task, split)
    # What bbt wrote before checkpoints were authenticated: the bare pickle, format 1.
    data = load_checkpoint(run)
    assert data is not None
    data["format"] = 1
    (run / LEGACY_CHECKPOINT).write_bytes(pickle.dumps(data))
    (run / CHECKPOINT).unlink()
    with pytest.raises(RunError, match="older bbt"):
        resume(run, _svc())
    res = resume(run, _svc(), trust_checkpoint=True)
    assert "legacy pickle checkpoint" in caplog.text
    assert res.z.tobytes() == full.z.tobytes()
    assert not (run / LEGACY_CHECKPOINT).exists()
    assert (run / CHECKPOINT).exists()


def _no_unpickling(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)


def test_resuming_a_completed_run_never_unpickles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_task: Task, split: Split
) -> None:
    run = tmp_path / "run"
    full = tune(_svc(), mock_task, *split, small_config(budget=16), run_dir=run)
    marker = tmp_path / "pwned"
    (run / CHECKPOINT).write_bytes(pickle.dumps(_Marker(marker)))
    _no_unpickling(monkeypatch)
    svc = _svc()
    again = resume(run, svc)
    assert again.z.tobytes() == full.z.tobytes()
    assert svc.usage.calls == 0
    assert not marker.exists()


def test_eval_predict_and_load_result_never_unpickle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_task: Task, split: Split
) -> None:
    from typer.testing import CliRunner

    from bbt.cli import app

    run = tmp_path / "run"
    train, dev = split
    tune(_svc(), mock_task, train, dev, small_config(budget=16), run_dir=run)
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": e.fields["text"], "label": e.label}) for e in dev)
    )
    _no_unpickling(monkeypatch)
    res = load_result(run)
    assert res.z.shape == (small_config().dim,)
    tp = TunedPrompt.load(run, _svc())
    assert len(tp.predict(["vate sato"])) == 1
    assert tp.evaluate(dev)["n"] == len(dev)
    runner = CliRunner()
    r = runner.invoke(app, ["eval", str(run), "--data", str(data), "--mock"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["n"] == len(dev)
    r = runner.invoke(app, ["predict", str(run), "vate sato", "--mock"])
    assert r.exit_code == 0, r.output


def test_history_is_untouched_by_a_refused_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_task: Task, split: Split
) -> None:
    run = _interrupted(tmp_path / "run", mock_task, split)
    before = (run / HISTORY).read_bytes()
    manifest = (run / "manifest.json").read_bytes()
    monkeypatch.setenv("BBT_HOME", str(tmp_path / "someone-else"))
    with pytest.raises(RunError):
        resume(run, _svc())
    assert (run / HISTORY).read_bytes() == before
    assert (run / "manifest.json").read_bytes() == manifest
    assert np.load(run / "p0.npy").shape == (5, H)
