"""``bbt tune --resume``: a checkpoint it refuses is refused before the service opens and
the progress bar draws, in one line, with no hint to resume (that is what was refused)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bbt.cli import _tune, app
from bbt.tuner.manifest import MANIFEST
from bbt.tuner.run import CHECKPOINT

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8"]


def _unfinished_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tiny run, checkpointed under this user's key and marked as not finished."""
    monkeypatch.setenv("BBT_HOME", str(tmp_path / "me"))
    run = tmp_path / "run"
    r = runner.invoke(
        app, ["tune", "--task", "mock", "--budget", "32", *SMALL, "-q", "--out", str(run)]
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((run / MANIFEST).read_text())
    manifest["status"] = "running"
    manifest.pop("result")
    (run / MANIFEST).write_text(json.dumps(manifest))
    return run


def _watch(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which of the service and the bar the command opened."""
    opened: list[str] = []
    real_service, real_bar = _tune.service_for_run, _tune.Progress

    def service(*args: Any) -> Any:
        opened.append("service")
        return real_service(*args)

    def bar(*args: Any) -> Any:
        opened.append("bar")
        return real_bar(*args)

    monkeypatch.setattr(_tune, "service_for_run", service)
    monkeypatch.setattr(_tune, "Progress", bar)
    return opened


@pytest.mark.parametrize("how", ["another user's key", "edited"])
def test_a_refused_checkpoint_is_refused_before_the_service_and_the_bar(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    run = _unfinished_run(tmp_path, monkeypatch)
    if how == "edited":
        data = bytearray((run / CHECKPOINT).read_bytes())
        data[len(data) // 2] ^= 1
        (run / CHECKPOINT).write_bytes(bytes(data))
    else:
        monkeypatch.setenv("BBT_HOME", str(tmp_path / "another-user"))
    opened = _watch(monkeypatch)
    r = runner.invoke(app, ["tune", "--resume", str(run)])
    assert r.exit_code == _tune.EXIT_ERROR
    assert r.output.startswith("error: refusing to load the checkpoint"), r.output
    assert "continue with" not in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert opened == []


def test_a_checkpoint_under_this_users_key_still_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = _unfinished_run(tmp_path, monkeypatch)
    opened = _watch(monkeypatch)
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q"])
    assert r.exit_code == 0, r.output
    assert opened == ["service", "bar"]
    assert json.loads((run / MANIFEST).read_text())["status"] == "completed"
