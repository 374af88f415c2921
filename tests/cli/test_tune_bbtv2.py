"""``bbt tune --method bbtv2``, then ``bbt eval`` / ``bbt predict`` / ``--resume`` on its run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from bbt.cli import app
from bbt.tuner import read_manifest
from bbt.tuner.run import PROMPT

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]


def test_bbtv2_run_then_eval_predict_and_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["tune", "--task", "mock", "--budget", "48", "--method", "bbtv2", "--out", str(run)]
    r = runner.invoke(app, [*args, "--layer-generations", "2", *SMALL])
    assert r.exit_code == 0, r.output
    m = read_manifest(run)
    assert m["method"] == "bbtv2"
    assert m["config"]["layer_generations"] == 2
    # The CLI's mock has one layer: its deep prompt is [1, n, H].
    assert np.load(run / PROMPT).shape == (1, 5, 32)

    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in [("vate sato", 0), ("pepe", 1)])
    )
    r = runner.invoke(app, ["eval", str(run), "--data", str(data)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["n"] == 2
    r = runner.invoke(app, ["predict", str(run), "vate sato kune"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["input"] == "vate sato kune"
    r = runner.invoke(app, ["tune", "--resume", str(run), "--mock", "-q"])
    assert r.exit_code == 0, r.output


def test_an_unknown_method_is_one_clear_line(tmp_path: Path) -> None:
    args = ["tune", "--task", "mock", *SMALL, "--out", str(tmp_path / "x"), "--method", "bbt3"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "method must be one of bbt, bbtv2" in r.output
    assert "Traceback" not in r.output
