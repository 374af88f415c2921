from __future__ import annotations

import sys
from pathlib import Path

import pytest

import bbt.tuner
from bbt.client import LocalClient
from bbt.tuner import Example, Task, tune

from .conftest import small_config


def test_all_is_sorted_and_complete() -> None:
    names = bbt.tuner.__all__

    def isort_style(name: str) -> tuple[int, str]:
        # Ruff's RUF022 order: CONSTANTS, then Classes, then functions, each alphabetical.
        return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)

    assert list(names) == sorted(names, key=isort_style)
    # ("@py..." names: pytest rewrites the asserts of every module of a plugin package.)
    public = {n for n in dir(bbt.tuner) if not n.startswith(("_", "@"))}
    modules = {
        "bbtv2",
        "callbacks",
        "checkpoint",
        "config",
        "data",
        "deep_sessions",
        "evaluator",
        "heldout",
        "inputs",
        "losses",
        "manifest",
        "methods",
        "optimizer",
        "optimizers",
        "options",
        "predict",
        "probe_baseline",
        "probe_head",
        "projection",
        "prompts",
        "readers",
        "readout",
        "records",
        "run",
        "rundir",
        "scoring",
        "sessions",
        "stopping",
        "tasks",
        "templates",
        "tracking",  # imported by its users only (mlflow), like plot
        "transfer",
        "tuner",
        "verbalizers",
        "plot",
    }
    assert public - modules == set(names)
    for n in names:
        assert getattr(bbt.tuner, n).__doc__ or not callable(getattr(bbt.tuner, n)), n


def test_core_import_needs_no_server_framework() -> None:
    # The tuner is part of the core install: importing it must not pull FastAPI or torch.
    code = (
        "import sys, bbt.tuner; "
        "bad = [m for m in ('fastapi', 'torch', 'transformers', 'uvicorn', 'matplotlib') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    import subprocess

    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_missing_matplotlib_is_a_note_not_a_failure(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    service: LocalClient,
    mock_task: Task,
    split: tuple[list[Example], list[Example]],
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    train, dev = split
    res = tune(service, mock_task, train, dev, small_config(budget=16), run_dir=tmp_path / "r")
    assert res.manifest["plot"] is None
    assert not (tmp_path / "r" / "plot.png").exists()
    assert "pip install 'bbt[plot]'" in caplog.text
