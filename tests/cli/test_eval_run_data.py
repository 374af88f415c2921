"""``bbt eval RUN --data RUN/dev.jsonl``: a run directory's own examples read back as data."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bbt.cli import app
from bbt.tuner import read_manifest

runner = CliRunner()


def test_eval_reads_the_run_directorys_dev_jsonl(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = runner.invoke(
        app, ["tune", "--mock", "--task", "mock", "--budget", "20", "-q", "--out", str(run)]
    )
    assert r.exit_code == 0, r.output
    ev = runner.invoke(app, ["eval", str(run), "--data", str(run / "dev.jsonl")])
    assert ev.exit_code == 0, ev.output
    metrics = json.loads(ev.stdout.strip().splitlines()[-1])
    result = read_manifest(run)["result"]
    dev = (run / "dev.jsonl").read_text().splitlines()
    # The run's own dev rows: eval scores the selected prompt exactly as the run did.
    assert metrics["n"] == len(dev)
    assert metrics["accuracy"] == result["dev_accuracy"]
    pred = runner.invoke(app, ["predict", str(run), "--file", str(run / "train.jsonl")])
    assert pred.exit_code == 0, pred.output
    assert len(pred.stdout.strip().splitlines()) == len(
        (run / "train.jsonl").read_text().splitlines()
    )
