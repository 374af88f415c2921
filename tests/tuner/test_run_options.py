"""bbt.tune accepts TuneOptions in place of a TuneConfig; today's keywords still work."""

from __future__ import annotations

from pathlib import Path

from bbt.client import LocalClient
from bbt.tuner import Example, InitialPrompt, Task, TuneOptions, read_manifest, resume, tune

from .conftest import small_config

Split = tuple[list[Example], list[Example]]


def test_tune_with_options_records_them_and_runs_as_with_their_config(
    service: LocalClient, mock_task: Task, split: Split, tmp_path: Path
) -> None:
    train, dev = split
    cfg = small_config(budget=80)
    options = TuneOptions(task="mock", k_shot=16, init="vocab", config=cfg)
    result = tune(service, mock_task, train, dev, options, run_dir=tmp_path / "a", plot=False)
    manifest = read_manifest(tmp_path / "a")
    assert TuneOptions.from_manifest(manifest) == options
    # init made p0, as the same config with that initial prompt does.
    same = tune(
        service,
        mock_task,
        train,
        dev,
        cfg,
        initial_prompt=InitialPrompt.parse("vocab", seed=cfg.seed),
        run_dir=tmp_path / "b",
        plot=False,
    )
    assert result.z.tolist() == same.z.tolist()
    assert "options" not in read_manifest(tmp_path / "b")  # a bare config: as before
    assert TuneOptions.from_manifest(read_manifest(tmp_path / "b")).config == cfg
    assert resume(tmp_path / "a", service, plot=False).z.tolist() == result.z.tolist()
