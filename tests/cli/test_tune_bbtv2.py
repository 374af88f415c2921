"""``bbt tune --method bbtv2`` on the command line: its refusals are one clear line."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from bbt.cli import app

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]


def test_bbtv2_against_a_service_without_deep_prompts_is_one_clear_line(tmp_path: Path) -> None:
    # The CLI's --mock is the one-layer mock, which (like every server before BBTv2) does
    # not offer deep prompts.
    run = tmp_path / "run"
    args = ["tune", "--task", "mock", "--budget", "48", "--method", "bbtv2", "--out", str(run)]
    r = runner.invoke(app, [*args, *SMALL])
    assert r.exit_code == 2, r.output
    assert "deep_prompts" in r.output
    assert "Traceback" not in r.output
    assert not (run / "manifest.json").exists()


def test_an_unknown_method_is_one_clear_line(tmp_path: Path) -> None:
    args = ["tune", "--task", "mock", *SMALL, "--out", str(tmp_path / "x"), "--method", "bbt3"]
    r = runner.invoke(app, args)
    assert r.exit_code == 2, r.output
    assert "method must be one of bbt, bbtv2" in r.output
    assert "Traceback" not in r.output
