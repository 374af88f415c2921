"""Resume refuses a projection or p0 that did not regenerate identically (issue 8, defect 4)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import RunError
from bbt.server.mock import MockBackend
from bbt.tuner import Example, Task, read_manifest, resume, tune
from bbt.tuner import tuner as tuner_module
from bbt.tuner.projection import Projection, ProjectionRecipe

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]


def _svc() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=H))


def _interrupted(path: Path, task: Task, split: Split) -> Path:
    def stop(rec: Any) -> None:
        if rec.generation >= 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tune(_svc(), task, *split, small_config(budget=80), run_dir=path, callbacks=[stop])
    return path


class _OtherNumpy(Projection):
    """A projection generator that draws differently, as another NumPy version might."""

    def __init__(self, recipe: ProjectionRecipe) -> None:
        super().__init__(recipe)
        self.matrix = np.ascontiguousarray(self.matrix[::-1])


def test_the_manifest_records_fingerprints_of_a_and_p0(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    run = _interrupted(tmp_path / "run", mock_task, split)
    fp = read_manifest(run)["fingerprints"]
    assert set(fp) == {"projection", "p0"}
    assert all(len(v) == 64 for v in fp.values())
    recipe = ProjectionRecipe.from_dict(read_manifest(run)["projection"])
    assert fp["projection"] == Projection(recipe).fingerprint()


def test_resume_refuses_a_projection_that_regenerates_differently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mock_task: Task, split: Split
) -> None:
    run = _interrupted(tmp_path / "run", mock_task, split)
    monkeypatch.setattr(tuner_module, "Projection", _OtherNumpy)
    with pytest.raises(RunError, match="projection A regenerated") as info:
        resume(run, _svc())
    message = str(info.value)
    assert f"numpy {np.__version__} recorded, {np.__version__} now" in message
    assert "cma " in message
    assert "\n" not in message
    assert read_manifest(run)["status"] == "interrupted"  # nothing ran


def test_resume_refuses_a_changed_p0(tmp_path: Path, mock_task: Task, split: Split) -> None:
    run = _interrupted(tmp_path / "run", mock_task, split)
    p0 = np.load(run / "p0.npy")
    p0[0, 0] += 1e-3
    np.save(run / "p0.npy", p0)
    with pytest.raises(RunError, match=r"p0\.npy differs"):
        resume(run, _svc())


def test_a_run_without_fingerprints_resumes_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mock_task: Task, split: Split
) -> None:
    full = tune(_svc(), mock_task, *split, small_config(budget=80), run_dir=tmp_path / "full")
    run = _interrupted(tmp_path / "run", mock_task, split)
    m = read_manifest(run)
    del m["fingerprints"]
    (run / "manifest.json").write_text(json.dumps(m))
    res = resume(run, _svc())
    assert "no fingerprint" in caplog.text
    assert res.z.tobytes() == full.z.tobytes()
