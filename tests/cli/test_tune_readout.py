"""``bbt tune --label-words/--calibrate/--search-label-words``: recorded in the run, read back
by ``bbt eval`` and resume; a bad spec is one error line."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from bbt.cli import app
from bbt.tuner import read_manifest
from bbt.tuner.manifest import MANIFEST

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]


def test_readout_flags_are_recorded_and_resume_keeps_the_searched_words(tmp_path: Path) -> None:
    run = tmp_path / "run"
    flags = ["--task", "mock", "--budget", "32", "--calibrate", "--search-label-words", "2"]
    r = runner.invoke(app, ["tune", *flags, "--out", str(run), "--no-plot", *SMALL])
    assert r.exit_code == 0, r.output
    config = read_manifest(run)["config"]
    assert config["calibrate"] is True
    assert config["search_label_words"] == 0  # done: the words are recorded instead
    words = config["label_words"]
    assert words.startswith("0=")
    manifest = read_manifest(run)
    manifest["status"] = "running"
    manifest.pop("result")
    (run / MANIFEST).write_text(json.dumps(manifest))
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q", "--no-plot"])
    assert r.exit_code == 0, r.output
    assert read_manifest(run)["config"]["label_words"] == words


def test_a_bad_label_words_spec_is_one_error_line(tmp_path: Path) -> None:
    flags = ["--task", "mock", "--budget", "16", "--label-words", "0=bad"]
    r = runner.invoke(app, ["tune", *flags, "--out", str(tmp_path / "r"), *SMALL])
    assert r.exit_code != 0
    assert "no word for label(s) positive" in r.output
    assert "Traceback" not in r.output
