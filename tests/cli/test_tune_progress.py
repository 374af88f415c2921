"""The progress bar of ``bbt tune``: on stderr, with an ETA, and messages above it, never
glued to its line."""

from __future__ import annotations

import re
from pathlib import Path

from typer.testing import CliRunner

from bbt.cli import _tune, app

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8"]
# What a terminal ignores when drawing: colour, cursor moves, line erases, cursor show/hide.
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def _screen_lines(text: str) -> list[str]:
    """The lines as a terminal would show them one after another (escape codes dropped,
    carriage returns and newlines both end a line)."""
    return [line for line in re.split(r"\r\n|\n|\r", ANSI.sub("", text)) if line.strip()]


def _bars(lines: list[str]) -> list[str]:
    return [line for line in lines if re.match(r"tuning .* \d+/\d+ calls ", line)]


def test_an_80_column_terminal_shows_the_message_on_its_own_line(tmp_path: Path) -> None:
    run = tmp_path / "run"
    # rich reads these: a terminal (live bar, cursor control) 80 columns wide.
    env = {"TTY_COMPATIBLE": "1", "COLUMNS": "80", "NO_COLOR": "1"}
    r = runner.invoke(
        app, ["tune", "--task", "mock", "--budget", "48", "--out", str(run), *SMALL], env=env
    )
    assert r.exit_code == 0, r.output
    assert r.stdout == ""  # the bar and every message are on stderr
    lines = _screen_lines(r.stderr)
    message = f"tuning mock on 32 train / 32 dev examples -> {run}"
    assert message in lines, lines
    bars = _bars(lines)
    assert bars, lines
    for line in lines:
        # The bug: "tuning ━━━ 0/48 calls ... 0:00:00tuning mock on 32 train ...".
        assert not (" calls " in line and "tuning mock on" in line), line
    assert all(len(bar) <= 80 for bar in bars), bars  # the bar fits: no wrapped half-lines
    # The terminal as a whole (stdout and stderr interleaved) shows the same.
    assert message in _screen_lines(r.output)


def test_the_bar_shows_an_eta(tmp_path: Path) -> None:
    env = {"TTY_COMPATIBLE": "1", "COLUMNS": "100", "NO_COLOR": "1"}
    r = runner.invoke(
        app,
        ["tune", "--task", "mock", "--budget", "48", "--out", str(tmp_path / "r"), *SMALL],
        env=env,
    )
    assert r.exit_code == 0, r.output
    bars = _bars(_screen_lines(r.stderr))
    assert re.search(r"eta -:--:--$", bars[0]), bars[0]  # nothing measured yet
    assert re.search(r"48/48 calls .* eta 0:00:00$", bars[-1]), bars[-1]


def test_eta_takes_the_pace_after_the_first_generation() -> None:
    eta = _tune._Eta(total=600)
    assert eta(0, 0.0) == "-:--:--"
    eta = _tune._Eta(total=600)
    # First record: 12 s for 10 calls, start-up included: 590 calls left at 1.2 s.
    assert eta(10, 12.0) == "0:11:48"
    # From there on the pace of generations alone: 9 s per 10 calls, 580 left.
    assert eta(20, 21.0) == "0:08:42"
    assert eta(600, 552.0) == "0:00:00"


def test_quiet_has_no_bar_and_no_messages(tmp_path: Path) -> None:
    env = {"TTY_COMPATIBLE": "1", "COLUMNS": "80"}
    r = runner.invoke(
        app,
        ["tune", "--task", "mock", "--budget", "16", "--out", str(tmp_path / "q"), *SMALL, "-q"],
        env=env,
    )
    assert r.exit_code == 0, r.output
    assert r.output == ""
