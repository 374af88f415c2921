"""A crafted run directory cannot make ``bbt tune --resume``, ``eval`` or ``predict`` write
outside it (issue 18, item 2).

Run directories are shared and downloaded like any artifact. At f05a715 a ``run.lock``,
``history.jsonl``, ``error.log`` or ``plot.png`` that was a symbolic link (or a hard link)
made bbt truncate, append to or overwrite the link's target. Each test plants such a link to
a "victim" file outside the run directory and checks two things: the command refuses with
one clear line (exit 2, no traceback) and the victim's bytes are exactly what they were.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner, Result

from bbt.cli import _tune, app
from bbt.client import LocalClient
from bbt.server.mock import MockBackend
from bbt.tuner import read_manifest
from bbt.tuner.run import ERROR_LOG, HISTORY, LOCK, PLOT, PROMPT, TRAIN_FILE

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]
TUNE = ["tune", "--task", "mock", "--budget", "64", *SMALL]
VICTIM_BYTES = b"precious: must survive every bbt command\n"


@pytest.fixture(autouse=True)
def _own_key_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBT_HOME", str(tmp_path_factory.mktemp("bbt-home")))


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside every run directory that no bbt command may change."""
    path = tmp_path / "victim.txt"
    path.write_bytes(VICTIM_BYTES)
    return path


def _interrupted_run(run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run stopped by Ctrl-C after a few generations: checkpointed, resumable."""
    real = MockBackend.logits
    seen = {"n": 0}

    def interrupt(self: MockBackend, *a: Any, **kw: Any) -> Any:
        seen["n"] += 1
        if seen["n"] > 3:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(MockBackend, "logits", interrupt)
    r = runner.invoke(app, [*TUNE, "--out", str(run)])
    monkeypatch.setattr(MockBackend, "logits", real)
    assert r.exit_code == _tune.EXIT_INTERRUPTED, r.output
    assert (run / HISTORY).stat().st_size > 0


def _completed_run(run: Path) -> None:
    r = runner.invoke(app, [*TUNE, "--no-plot", "--out", str(run)])
    assert r.exit_code == 0, r.output


def _plant_symlink(run: Path, name: str, target: Path) -> None:
    (run / name).unlink(missing_ok=True)
    (run / name).symlink_to(target)


def _assert_refused(r: Result, name: str) -> None:
    """Exit 2 with one line that names the offending entry; no traceback, no resume hint
    (resuming that directory is exactly what must not happen)."""
    assert r.exit_code == _tune.EXIT_ERROR, r.output
    assert isinstance(r.exception, SystemExit)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1, r.output
    assert lines[0].startswith("error: refusing the run directory"), r.output
    assert name in lines[0]
    assert "Traceback" not in r.output


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize("name", [LOCK, HISTORY, ERROR_LOG, PLOT])
def test_resume_refuses_a_symlink_and_leaves_its_target_alone(
    name: str, tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    _interrupted_run(run, monkeypatch)
    _plant_symlink(run, name, victim)
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q"])
    assert victim.read_bytes() == VICTIM_BYTES
    _assert_refused(r, name)
    assert (run / name).is_symlink()  # refused, not "repaired": the user decides


def test_resume_that_fails_internally_appends_no_traceback_through_a_link(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At f05a715 the internal-error path appended the traceback to error.log's target."""
    run = tmp_path / "run"
    _interrupted_run(run, monkeypatch)
    _plant_symlink(run, ERROR_LOG, victim)

    def boom(self: LocalClient, *args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(LocalClient, "logits", boom)
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q"])
    assert victim.read_bytes() == VICTIM_BYTES
    _assert_refused(r, ERROR_LOG)


def test_resume_refuses_a_hard_linked_history(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hard link is no symlink, but truncating and appending to it writes the victim too."""
    run = tmp_path / "run"
    _interrupted_run(run, monkeypatch)
    (run / HISTORY).unlink()
    os.link(victim, run / HISTORY)
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q"])
    assert victim.read_bytes() == VICTIM_BYTES
    _assert_refused(r, HISTORY)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_resume_refuses_a_fifo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Opening a FIFO for reading blocks until a writer comes: it is refused, never opened."""
    run = tmp_path / "run"
    _interrupted_run(run, monkeypatch)
    (run / HISTORY).unlink()
    os.mkfifo(run / HISTORY)
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q"])
    _assert_refused(r, HISTORY)


def test_a_symlinked_run_directory_still_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The directory itself may be a link (``make demo`` points runs/demo-agnews at the
    latest run); only links *inside* it are refused."""
    run = tmp_path / "real-run"
    _interrupted_run(run, monkeypatch)
    alias = tmp_path / "latest"
    alias.symlink_to(run, target_is_directory=True)
    r = runner.invoke(app, ["tune", "--resume", str(alias), "-q"])
    assert r.exit_code == 0, r.output
    assert read_manifest(run)["status"] == "completed"
    r = runner.invoke(app, ["predict", str(alias), "a great film"])
    assert r.exit_code == 0, r.output


# --------------------------------------------------------------------------- new runs


def test_a_new_run_refuses_an_output_directory_with_a_link(tmp_path: Path, victim: Path) -> None:
    """``--out`` may name an existing directory; one holding a link is refused before any
    file is written (at f05a715 the training set went through the link)."""
    out = tmp_path / "out"
    out.mkdir()
    _plant_symlink(out, TRAIN_FILE, victim)
    r = runner.invoke(app, [*TUNE, "--no-plot", "--out", str(out)])
    assert victim.read_bytes() == VICTIM_BYTES
    _assert_refused(r, TRAIN_FILE)


# --------------------------------------------------------------------------- eval, predict


@pytest.mark.parametrize("name", [LOCK, HISTORY, ERROR_LOG, PROMPT, "prompt_ids.json"])
@pytest.mark.parametrize("command", ["eval", "predict"])
def test_eval_and_predict_refuse_a_run_directory_with_a_link(
    command: str, name: str, tmp_path: Path, victim: Path
) -> None:
    run = tmp_path / "run"
    _completed_run(run)
    _plant_symlink(run, name, victim)
    data = tmp_path / "data.tsv"
    data.write_text("text\tlabel\na great film\tpositive\na dull film\tnegative\n")
    args = ["--data", str(data)] if command == "eval" else ["a great film"]
    r = runner.invoke(app, [command, str(run), *args])
    assert victim.read_bytes() == VICTIM_BYTES
    _assert_refused(r, name)


def test_the_internal_error_log_is_never_written_through_a_link(
    tmp_path: Path, victim: Path
) -> None:
    """The last-resort error path itself: a link planted while the run was going is not
    followed (the one line still goes out, without a traceback location)."""
    run = tmp_path / "run"
    run.mkdir()
    _plant_symlink(run, ERROR_LOG, victim)
    with pytest.raises(typer.Exit) as info:
        _tune._internal_error(ValueError("surprise"), run)
    assert info.value.exit_code == _tune.EXIT_INTERNAL
    assert victim.read_bytes() == VICTIM_BYTES
