"""Options as data: ``bbt tune``'s flags become a TuneOptions that the manifest records and
resume reads back; ``--help`` groups the options in panels."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bbt.cli import app
from bbt.tuner import TuneConfig, TuneOptions, read_manifest
from bbt.tuner.manifest import MANIFEST

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]


def test_flags_become_options_the_manifest_records_and_resume_reads(tmp_path: Path) -> None:
    run = tmp_path / "run"
    flags = ["--task", "mock", "--budget", "80", "-k", "8", "--dev-k", "4", "--data-seed", "7"]
    flags += ["--sigma", "0.5", "--eval-mean", "--init", "vocab", "--out", str(run), *SMALL]
    r = runner.invoke(app, ["tune", *flags])
    assert r.exit_code == 0, r.output
    manifest = read_manifest(run)
    options = TuneOptions.from_manifest(manifest)
    assert options.task == "mock"
    assert (options.k_shot, options.dev_k, options.data_seed) == (8, 4, 7)
    assert options.init == "vocab"
    assert options.config == TuneConfig(
        n_tokens=5, dim=20, popsize=8, budget=80, sigma=0.5, eval_mean=True
    )
    # The config is recorded once, under "config"; the options name the rest.
    assert "config" not in manifest["options"]
    assert TuneOptions.from_dict(json.loads(json.dumps(options.as_dict()))) == options

    # An interrupted run resumes with the options it recorded (here: cut back to running).
    manifest["status"] = "running"
    manifest.pop("result")
    (run / MANIFEST).write_text(json.dumps(manifest))
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q"])
    assert r.exit_code == 0, r.output
    assert TuneOptions.from_manifest(read_manifest(run)) == options


def test_a_manifest_from_before_options_reads_with_defaults(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = runner.invoke(app, ["tune", "--task", "mock", "--budget", "80", "--out", str(run), *SMALL])
    assert r.exit_code == 0, r.output
    manifest = read_manifest(run)
    del manifest["options"]
    options = TuneOptions.from_manifest(manifest)
    assert options.task == "mock"
    assert options.k_shot == 16
    assert options.init == "zeros"
    assert options.config.as_dict() == manifest["config"]


def test_help_groups_the_options_in_panels() -> None:
    r = runner.invoke(app, ["tune", "--help"], env={"COLUMNS": "120", "TERM": "dumb"})
    assert r.exit_code == 0, r.output
    panels = [
        "Task & data",
        "Budget & CMA-ES",
        "Prompt",
        "Service",
        "Server (embedded)",
        "Run directory",
    ]
    at = {p: r.output.find(f"─ {p} ─") for p in panels}
    assert all(i >= 0 for i in at.values()), r.output

    def panel_of(flag: str) -> str:
        pos = r.output.find(flag)
        return max((i, p) for p, i in at.items() if i < pos)[1]

    assert panel_of("--k-shot") == "Task & data"
    assert panel_of("--budget") == "Budget & CMA-ES"
    assert panel_of("--n-tokens") == "Prompt"
    assert panel_of("--base-url") == "Service"
    assert panel_of("--server-dtype") == "Server (embedded)"
    assert panel_of("--resume") == "Run directory"
