"""One process drives a run directory at a time (issue 8, defect 6)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from bbt.client import LocalClient
from bbt.errors import RunError
from bbt.server.mock import MockBackend
from bbt.tuner import Example, Task, TuneResult, read_manifest, resume, tune

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]
TIMEOUT = 120


def _svc() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=H))


def test_two_tunes_racing_on_one_directory_one_wins(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    run = tmp_path / "run"
    start = threading.Barrier(2)
    results: list[TuneResult] = []
    errors: list[BaseException] = []

    def go(seed: int) -> None:
        cfg = small_config(budget=40, seed=seed)
        svc = _svc()
        start.wait(TIMEOUT)  # both have their service ready: the race is on the directory
        try:
            results.append(tune(svc, mock_task, *split, cfg, run_dir=run, plot=False))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=go, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert len(results) == 1, errors
    assert len(errors) == 1
    assert isinstance(errors[0], RunError)
    assert "in use by another bbt process" in str(errors[0]) or "already holds a run" in str(
        errors[0]
    )
    # The winner's run is whole: its own seed, its own history, completed.
    m = read_manifest(run)
    assert m["status"] == "completed"
    assert m["result"]["z"] == results[0].z.tolist()


def _blocking_run(
    run: Path, mock_task: Task, split: Split, start_it: Any
) -> tuple[threading.Thread, threading.Event, threading.Event, list[Any]]:
    """A run driven in a thread that pauses after its 2nd generation until released."""
    paused, release = threading.Event(), threading.Event()
    out: list[Any] = []

    def cb(rec: Any) -> None:
        if rec.generation == 2:
            paused.set()
            release.wait(TIMEOUT)

    def go() -> None:
        try:
            out.append(start_it(cb))
        except BaseException as exc:
            out.append(exc)

    t = threading.Thread(target=go)
    t.start()
    assert paused.wait(TIMEOUT)
    return t, paused, release, out


def test_a_running_tune_refuses_a_second_tune_and_a_resume(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    run = tmp_path / "run"
    cfg = small_config(budget=40)
    t, _, release, out = _blocking_run(
        run,
        mock_task,
        split,
        lambda cb: tune(_svc(), mock_task, *split, cfg, run_dir=run, callbacks=[cb], plot=False),
    )
    try:
        with pytest.raises(RunError, match="in use by another bbt process"):
            resume(run, _svc())
        with pytest.raises(RunError, match="in use by another bbt process"):
            tune(_svc(), mock_task, *split, cfg, run_dir=run, overwrite=True)
    finally:
        release.set()
        t.join(TIMEOUT)
    assert isinstance(out[0], TuneResult)
    assert read_manifest(run)["status"] == "completed"


def test_a_second_resume_while_one_runs_is_refused(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    run = tmp_path / "run"
    cfg = small_config(budget=80)

    def stop(rec: Any) -> None:
        if rec.generation >= 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(_svc(), mock_task, *split, cfg, run_dir=run, callbacks=[stop])
    t, _, release, out = _blocking_run(
        run, mock_task, split, lambda cb: resume(run, _svc(), callbacks=[cb], plot=False)
    )
    try:
        with pytest.raises(RunError, match="in use by another bbt process"):
            resume(run, _svc())
    finally:
        release.set()
        t.join(TIMEOUT)
    assert isinstance(out[0], TuneResult)
    # Released at the end: a later resume returns the recorded result.
    assert resume(run, _svc()).z.tobytes() == out[0].z.tobytes()
