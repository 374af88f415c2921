"""``bbt eval RUN --data FILE --baseline``: p0 and the tuned prompt on the same rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.cli import app
from bbt.tuner import read_manifest

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("baseline") / "run"
    r = runner.invoke(
        app, ["tune", "--task", "mock", "--budget", "80", "--seed", "3", "--out", str(out), *SMALL]
    )
    assert r.exit_code == 0, r.output
    return out


def _flat(run: Path, name: str, dst: Path) -> Path:
    """A run's train.jsonl / dev.jsonl ({"fields": ..., "label": ...}) as a data file."""
    rows = [json.loads(line) for line in (run / name).read_text().splitlines()]
    dst.write_text("".join(json.dumps({**r["fields"], "label": r["label"]}) + "\n" for r in rows))
    return dst


def test_baseline_prints_both_figures_and_the_tuned_one_is_evals(run: Path, tmp_path: Path) -> None:
    data = _flat(run, "dev.jsonl", tmp_path / "dev.jsonl")
    plain = runner.invoke(app, ["eval", str(run), "--data", str(data)])
    assert plain.exit_code == 0, plain.output
    r = runner.invoke(app, ["eval", str(run), "--data", str(data), "--baseline"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    tuned = json.loads(plain.stdout.strip().splitlines()[-1])
    # The tuned prompt's figures are exactly plain `bbt eval`'s, at the top level.
    assert {k: report[k] for k in tuned} == tuned
    assert report["metric"] == "accuracy"
    assert report["gain"] == pytest.approx(report["accuracy"] - report["p0"]["accuracy"])
    result = read_manifest(run)["result"]
    assert (report["calls"], report["dev_calls"]) == (result["calls"], result["dev_calls"])
    # ... and the line a person reads, with both figures and the gain.
    p0, acc, gain = report["p0"]["accuracy"], report["accuracy"], report["gain"]
    line = r.stderr.strip().splitlines()[-1]
    assert line == (
        f"held-out accuracy on {report['n']} rows of dev.jsonl: p0 {100 * p0:.1f}% -> tuned "
        f"{100 * acc:.1f}% ({100 * gain:+.1f} points) after {result['calls']} API calls "
        f"(+{result['dev_calls']} on dev)"
    )


def test_baseline_is_the_prompt_at_z_zero(run: Path, tmp_path: Path) -> None:
    """On the dev set, p0's score is the run's own score of the prompt it started from (z = 0,
    before any CMA-ES step) and the tuned one is the selected prompt's dev score."""
    data = _flat(run, "dev.jsonl", tmp_path / "dev.jsonl")
    r = runner.invoke(app, ["eval", str(run), "--data", str(data), "--baseline"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout.strip().splitlines()[-1])
    result = read_manifest(run)["result"]
    assert report["p0"]["accuracy"] == result["initial_dev_accuracy"]
    assert report["accuracy"] == result["dev_accuracy"]
    assert report["gain"] > 0


def test_baseline_of_a_run_without_p0_is_a_clear_error(run: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    for f in run.iterdir():
        if f.is_file() and f.name not in ("p0.npy", "run.lock"):
            (old / f.name).write_bytes(f.read_bytes())
    data = _flat(run, "dev.jsonl", tmp_path / "dev.jsonl")
    r = runner.invoke(app, ["eval", str(old), "--data", str(data), "--baseline"])
    assert r.exit_code == 2
    assert "has no p0.npy" in r.output
    assert "Traceback" not in r.output
