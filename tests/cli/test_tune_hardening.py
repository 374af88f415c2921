"""``bbt tune`` never shows a traceback, never shares a run directory, and resumes a foreign
checkpoint only when told to (issue 8, defects 2, 5 and 6)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from bbt.cli import _tune, app
from bbt.client import LocalClient
from bbt.server.mock import MockBackend
from bbt.tuner import read_manifest
from bbt.tuner.run import CHECKPOINT, ERROR_LOG

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]
CANARY = "sk-canary-5f0e3d2c1b0a-never-print"


@pytest.fixture(autouse=True)
def _own_key_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBT_HOME", str(tmp_path_factory.mktemp("bbt-home")))


def test_an_unexpected_exception_is_one_line_with_the_resume_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBT_API_KEY", CANARY)
    # The service itself raises (the backend's errors would become ServerError first).
    real = LocalClient.logits
    seen = {"n": 0}

    def flaky(self: LocalClient, *args: Any, **kwargs: Any) -> Any:
        seen["n"] += 1
        if seen["n"] > 4:
            raise ZeroDivisionError(f"boom with {CANARY} inside")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(LocalClient, "logits", flaky)
    run = tmp_path / "run"
    r = runner.invoke(app, ["tune", "--task", "mock", "--budget", "80", "--out", str(run), *SMALL])
    assert r.exit_code == _tune.EXIT_INTERNAL
    assert isinstance(r.exception, SystemExit)  # typer.Exit, not the ZeroDivisionError
    out = r.output
    assert "Traceback" not in out
    assert "error: internal error: ZeroDivisionError: boom with *** inside" in out
    assert f"bbt tune --resume {run}" in out
    assert f"traceback in {run / ERROR_LOG}" in out
    assert CANARY not in out
    log = (run / ERROR_LOG).read_text()
    assert "Traceback" in log
    assert "ZeroDivisionError" in log
    assert CANARY not in log
    assert (run / CHECKPOINT).exists()
    monkeypatch.setattr(LocalClient, "logits", real)
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q"])
    assert r.exit_code == 0, r.output
    assert read_manifest(run)["status"] == "completed"


def test_a_key_given_as_argument_is_redacted_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # --api-key (not only BBT_API_KEY) is what the one-line error must never show.
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError(f"surprise {CANARY}")

    monkeypatch.setattr("bbt.tuner.sample_k_shot", broken)
    out = str(tmp_path / "r")
    r = runner.invoke(app, ["tune", "--task", "mock", "--api-key", CANARY, "--out", out, *SMALL])
    assert r.exit_code == _tune.EXIT_INTERNAL
    assert "error: internal error: KeyError: 'surprise ***'" in r.output
    assert CANARY not in r.output


def test_typers_own_exits_pass_through_the_guard() -> None:
    # typer.Exit is a RuntimeError: the guard must let it (and Abort) out as it is, not call it
    # an internal error, whichever click (its own copy or the click package) typer is built on.
    with pytest.raises(typer.Exit) as exc:
        _tune._guard(lambda: _tune._fail("inner"))
    assert exc.value.exit_code == _tune.EXIT_ERROR
    with pytest.raises(typer.Abort):
        _tune._guard(lambda: (_ for _ in ()).throw(typer.Abort()))
    with pytest.raises(typer.BadParameter):
        _tune._guard(lambda: (_ for _ in ()).throw(typer.BadParameter("no")))


def test_an_unexpected_exception_before_the_run_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr("bbt.tuner.sample_k_shot", broken)
    r = runner.invoke(app, ["tune", "--task", "mock", "--out", str(tmp_path / "r"), *SMALL])
    assert r.exit_code == _tune.EXIT_INTERNAL
    assert "error: internal error: KeyError: 'surprise'" in r.output
    assert "Traceback" not in r.output
    assert "--resume" not in r.output


def test_default_run_directories_never_collide() -> None:
    names = {_tune._default_out("mock") for _ in range(50)}  # all within one second or two
    assert len(names) == 50
    for n in names:
        assert n.parent == Path("runs")
        assert n.name.startswith("mock-")


def test_resume_of_a_foreign_checkpoint_needs_trust_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full, run = tmp_path / "full", tmp_path / "run"
    args = ["tune", "--task", "mock", "--budget", "64", *SMALL, "--no-plot"]
    assert runner.invoke(app, [*args, "--out", str(full)]).exit_code == 0
    real = MockBackend.logits
    seen = {"n": 0}

    def interrupt(self: MockBackend, *a: Any, **kw: Any) -> Any:
        seen["n"] += 1
        if seen["n"] > 3:
            raise KeyboardInterrupt
        return real(self, *a, **kw)

    monkeypatch.setattr(MockBackend, "logits", interrupt)
    r = runner.invoke(app, [*args, "--out", str(run)])
    assert r.exit_code == _tune.EXIT_INTERRUPTED, r.output
    monkeypatch.setattr(MockBackend, "logits", real)
    monkeypatch.setenv("BBT_HOME", str(tmp_path / "another-user"))
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q"])
    assert r.exit_code == _tune.EXIT_ERROR
    assert "refusing to load the checkpoint" in r.output
    assert "--trust-checkpoint" in r.output
    assert "Traceback" not in r.output
    r = runner.invoke(app, ["tune", "--resume", str(run), "--trust-checkpoint"])
    assert r.exit_code == 0, r.output
    assert "--trust-checkpoint" in r.output  # warned
    assert np.load(run / "z.npy").tobytes() == np.load(full / "z.npy").tobytes()


def test_trust_checkpoint_goes_with_resume(tmp_path: Path) -> None:
    r = runner.invoke(app, ["tune", "--task", "mock", "--trust-checkpoint", *SMALL])
    assert r.exit_code == _tune.EXIT_ERROR
    assert "--trust-checkpoint goes with --resume" in r.output


def test_no_key_file_in_the_run_directory(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = runner.invoke(app, ["tune", "--task", "mock", "--budget", "16", "--out", str(run), *SMALL])
    assert r.exit_code == 0, r.output
    key = Path(os.environ["BBT_HOME"], "checkpoint.key").read_text().strip()
    for f in run.iterdir():
        assert key.encode() not in f.read_bytes(), f.name
        assert bytes.fromhex(key) not in f.read_bytes(), f.name


def test_a_budget_below_one_generation_is_one_error_line(tmp_path: Path) -> None:
    out = tmp_path / "r"
    r = runner.invoke(app, ["tune", "--task", "mock", "--mock", "--budget", "8", "--out", str(out)])
    assert r.exit_code != 0
    assert "budget 8 is below one generation" in r.output
    assert "Traceback" not in r.output
    assert "internal error" not in r.output
