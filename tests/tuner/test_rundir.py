"""bbt.tuner.rundir: files in a run directory are opened without following links and
replaced atomically; a directory holding a link is refused whole (issue 18, item 2)."""

from __future__ import annotations

import ast
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.errors import RunError, UnsafeRunDirError
from bbt.tuner import read_manifest, resume, rundir, tune
from bbt.tuner.plot import plot_history
from bbt.tuner.run import ERROR_LOG, HISTORY, LOCK, RunLock
from bbt.tuner.tasks import Task

from .conftest import small_config

Split = tuple[list[Any], list[Any]]
OLD = b"old content\n"
VICTIM = b"victim: nobody may write this\n"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def run(tmp_path: Path) -> Path:
    d = tmp_path / "run"
    d.mkdir()
    return d


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.write_bytes(VICTIM)
    return v


# --------------------------------------------------------------------------- atomic replace


def test_a_failed_replace_leaves_the_old_file_and_no_temp(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the temp file and the rename (here: os.replace raising) leaves the old
    content whole and no temp file behind."""
    target = run / "manifest.json"
    target.write_bytes(OLD)

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="No space left"):
        rundir.atomic_write(target, b"new content that never lands\n")
    assert target.read_bytes() == OLD
    assert sorted(p.name for p in run.iterdir()) == ["manifest.json"]


def test_a_failed_temp_write_leaves_the_old_file_and_no_temp(
    run: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = run / "checkpoint.bin"
    target.write_bytes(OLD)

    def crash(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="Input/output"):
        rundir.atomic_write(target, b"x" * 4096)
    assert target.read_bytes() == OLD
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.bin"]


def test_atomic_write_replaces_a_link_instead_of_writing_through_it(
    run: Path, victim: Path
) -> None:
    (run / "plot.png").symlink_to(victim)
    rundir.atomic_write(run / "plot.png", b"png")
    assert victim.read_bytes() == VICTIM
    assert not (run / "plot.png").is_symlink()
    assert (run / "plot.png").read_bytes() == b"png"


def test_exclusive_create_never_clobbers_a_dangling_link(run: Path, tmp_path: Path) -> None:
    (run / "manifest.json").symlink_to(tmp_path / "not-there-yet")
    with pytest.raises(FileExistsError):
        rundir.exclusive_create(run / "manifest.json", b"{}")
    assert not (tmp_path / "not-there-yet").exists()
    assert [p.name for p in run.iterdir()] == ["manifest.json"]  # and no temp left


# --------------------------------------------------------------------------- opens


@pytest.mark.parametrize("mode", ["rb", "ab", "r+b"])
def test_open_file_refuses_a_symlink(mode: rundir.Mode, run: Path, victim: Path) -> None:
    (run / HISTORY).symlink_to(victim)
    with pytest.raises(UnsafeRunDirError, match=r"history\.jsonl is a symbolic link"):
        rundir.open_file(run / HISTORY, mode)
    assert victim.read_bytes() == VICTIM


def test_open_file_refuses_a_dangling_symlink_for_append(run: Path, tmp_path: Path) -> None:
    """O_CREAT through a dangling link would create the target wherever it points."""
    (run / ERROR_LOG).symlink_to(tmp_path / "created-elsewhere")
    with pytest.raises(UnsafeRunDirError, match="symbolic link"):
        rundir.open_file(run / ERROR_LOG, "ab")
    assert not (tmp_path / "created-elsewhere").exists()


@pytest.mark.parametrize("name", sorted(rundir.IN_PLACE))
def test_in_place_files_refuse_a_second_hard_link(name: str, run: Path, victim: Path) -> None:
    os.link(victim, run / name)
    with pytest.raises(UnsafeRunDirError, match="2 hard links"):
        rundir.open_file(run / name, "ab")
    assert victim.read_bytes() == VICTIM


def test_a_replaced_file_may_have_hard_links(run: Path, victim: Path) -> None:
    """Files that are only read or atomically replaced (e.g. a `cp -al` backup of a run) are
    not written through, so a second link there is no danger and is not refused."""
    os.link(victim, run / "prompt.npy")
    assert rundir.read_bytes(run / "prompt.npy") == VICTIM
    rundir.check_run_dir(run)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("mode", ["rb", "ab", "r+b"])
def test_a_fifo_is_refused_without_blocking(mode: rundir.Mode, run: Path) -> None:
    os.mkfifo(run / HISTORY)
    with pytest.raises(UnsafeRunDirError, match="is a FIFO"):
        rundir.open_file(run / HISTORY, mode)  # a plain open("rb") would block forever


def test_a_missing_file_is_file_not_found(run: Path) -> None:
    with pytest.raises(FileNotFoundError):
        rundir.read_bytes(run / "z.npy")


def test_reads_and_appends_work_on_regular_files(run: Path) -> None:
    with rundir.open_file(run / HISTORY, "ab") as fh:
        fh.write(b"one\n")
        assert fh.tell() == 4
    with rundir.open_file(run / HISTORY, "ab") as fh:
        fh.write(b"two\n")
        assert fh.tell() == 8  # the history offset a checkpoint records
    with rundir.open_file(run / HISTORY, "r+b") as fh:
        fh.truncate(4)
    assert rundir.read_text(run / HISTORY) == "one\n"
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)
    rundir.save_npy(run / "p0.npy", arr)
    assert rundir.load_npy(run / "p0.npy").tobytes() == arr.tobytes()


def test_without_o_nofollow_the_entry_is_checked_before_the_open(
    run: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windows has no O_NOFOLLOW: the lstat check before the open must refuse the link."""
    monkeypatch.setattr(rundir, "_NOFOLLOW", 0)
    (run / HISTORY).symlink_to(victim)
    with pytest.raises(UnsafeRunDirError, match="symbolic link"):
        rundir.open_file(run / HISTORY, "ab")
    assert victim.read_bytes() == VICTIM


# --------------------------------------------------------------------------- the gate


def test_check_run_dir_names_the_first_offending_entry(run: Path, victim: Path) -> None:
    (run / "manifest.json").write_text("{}")
    (run / "sub").mkdir()  # subdirectories are allowed: bbt never opens anything in them
    (run / "sub" / "link").symlink_to(victim)
    rundir.check_run_dir(run)
    (run / ".checkpoint.bin.abc.tmp").symlink_to(victim)
    with pytest.raises(UnsafeRunDirError) as info:
        rundir.check_run_dir(run)
    message = str(info.value)
    assert message.startswith(f"refusing the run directory {run}: .checkpoint.bin.abc.tmp is")
    assert "\n" not in message


def test_check_run_dir_of_a_missing_directory_is_a_run_error(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="cannot read run directory"):
        rundir.check_run_dir(tmp_path / "nope")


def test_in_place_names_are_the_files_bbt_appends_to_or_truncates() -> None:
    assert {LOCK, HISTORY, ERROR_LOG} == rundir.IN_PLACE


def test_the_run_lock_is_never_taken_through_a_link(run: Path, victim: Path) -> None:
    (run / LOCK).symlink_to(victim)
    with pytest.raises(UnsafeRunDirError, match=r"run\.lock is a symbolic link"):
        RunLock(run).acquire()
    assert victim.read_bytes() == VICTIM


def test_plot_history_replaces_a_linked_plot(run: Path, victim: Path) -> None:
    pytest.importorskip("matplotlib")
    row = {"calls": 8, "loss_mean": 1.0, "loss_min": 0.5, "best_loss": 0.5, "dev_metric": 0.7}
    (run / HISTORY).write_text(json.dumps(row) + "\n")
    (run / "plot.png").symlink_to(victim)
    assert plot_history(run / HISTORY, run / "plot.png") is None
    assert victim.read_bytes() == VICTIM
    assert (run / "plot.png").read_bytes().startswith(b"\x89PNG")


# --------------------------------------------------------------------------- library API


def test_library_resume_and_read_manifest_refuse_a_linked_history(
    tmp_path: Path, service: Any, mock_task: Task, split: Split, victim: Path
) -> None:
    """The library refuses too (the CLI tests cover the commands): resume() of a finished
    run, and read_manifest() for anything else that opens an existing run."""
    run = tmp_path / "run"
    tune(service, mock_task, *split, small_config(budget=32), run_dir=run, plot=False)
    (run / HISTORY).unlink()
    (run / HISTORY).symlink_to(victim)
    with pytest.raises(UnsafeRunDirError, match=r"history\.jsonl is a symbolic link"):
        read_manifest(run)
    with pytest.raises(UnsafeRunDirError):
        resume(run, service, plot=False)
    assert victim.read_bytes() == VICTIM


def test_a_symlinked_run_directory_is_fine(
    tmp_path: Path, service: Any, mock_task: Task, split: Split
) -> None:
    real = tmp_path / "real"
    tune(service, mock_task, *split, small_config(budget=32), run_dir=real, plot=False)
    alias = tmp_path / "latest"
    alias.symlink_to(real, target_is_directory=True)
    assert read_manifest(alias)["status"] == "completed"
    assert resume(alias, service, plot=False).z.tolist() == read_manifest(real)["result"]["z"]


# --------------------------------------------------------------------------- no raw opens

#: Modules that touch run directories: every file operation there goes through rundir.
RUN_DIR_MODULES = [
    "bbt/tuner/run.py",
    "bbt/tuner/manifest.py",
    "bbt/tuner/plot.py",
    "bbt/tuner/predict.py",
    "bbt/cli/_tune.py",
    "bbt/cli/_errors.py",
]
# (savefig is not here: plot.py draws into a BytesIO; test_plot_history_* covers the file.)
_FORBIDDEN_METHODS = {"open", "read_text", "read_bytes", "write_text", "write_bytes"}
_FORBIDDEN_MODULE_CALLS = {
    ("os", "open"),
    ("os", "fdopen"),
    ("os", "replace"),
    ("os", "rename"),
    ("np", "load"),
    ("np", "save"),
    ("tempfile", "mkstemp"),
    ("shutil", "copyfile"),
}
_FORBIDDEN_NAMES = {"open", "read_jsonl", "write_jsonl"}


def _raw_file_calls(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in _FORBIDDEN_NAMES:
            found.append(f"{path.name}:{node.lineno} {f.id}()")
        elif isinstance(f, ast.Attribute):
            owner = f.value.id if isinstance(f.value, ast.Name) else None
            if (owner, f.attr) in _FORBIDDEN_MODULE_CALLS or (
                f.attr in _FORBIDDEN_METHODS and owner != "rundir"
            ):
                found.append(f"{path.name}:{node.lineno} {owner or '...'}.{f.attr}()")
    return found


@pytest.mark.parametrize("module", RUN_DIR_MODULES)
def test_no_raw_file_operation_in_modules_that_touch_run_directories(module: str) -> None:
    """A new ``open()`` of a run file would follow links again: use bbt.tuner.rundir."""
    assert _raw_file_calls(ROOT / module) == []


def test_the_raw_call_scan_finds_what_it_forbids(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, numpy as np\n"
        "open('x')\n"
        "p.open('a')\n"
        "p.read_text()\n"
        "np.load(p)\n"
        "os.replace(a, b)\n"
        "text.replace(a, b)\n"  # a str method, not a file operation
    )
    assert len(_raw_file_calls(probe)) == 5
