"""``bbt tune`` refuses what it can check without the service before it says or draws
anything (bbt.cli._preflight)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.cli import app

runner = CliRunner()
SMALL = ["--mock", "--task", "mock", "--budget", "20", "--popsize", "5", "--dim", "8"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--init", "run:/missing-run"], "cannot start from run /missing-run"),
        (["--init", "mix:/missing-a,/missing-b"], "cannot start from run /missing-a"),
        (["--init", "mix:/missing-a"], "at least two source runs"),
        (["--init", "prompt:nope"], "not a prompt id"),
        (["--init", "file:/missing.npy"], "cannot read initial prompt /missing.npy"),
        (["--method", "mixture"], "method mixture needs its source prompts"),
        (["--label-words", "x"], "cannot read label-words item 'x'"),
        (["--label-words", "nolabel=bad"], "unknown label 'nolabel'"),
        (["--label-map", "x"], "cannot read label map item 'x'"),
        (["--label-map", "a=0", "--column", "text=body"], "--label-map, --column describe"),
    ],
)
def test_a_bad_start_fails_before_any_progress_output(
    tmp_path: Path, args: list[str], message: str
) -> None:
    out = tmp_path / "run"
    r = runner.invoke(app, ["tune", *SMALL, "--out", str(out), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "tuning" not in r.output  # neither the "tuning ... ->" line nor the bar
    assert "Traceback" not in r.output
    assert not out.exists()


def test_a_finished_run_passes_the_check(tmp_path: Path) -> None:
    source = tmp_path / "source"
    first = runner.invoke(app, ["tune", *SMALL, "--quiet", "--no-plot", "--out", str(source)])
    assert first.exit_code == 0, first.output
    r = runner.invoke(
        app,
        ["tune", *SMALL, "--no-plot", "--init", f"run:{source}", "--out", str(tmp_path / "b")],
    )
    assert r.exit_code == 0, r.output
    assert "tuning mock" in r.output
