"""``python -m bbt.cli`` runs the ``bbt`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from bbt._version import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_python_m_bbt_cli_prints_the_version() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bbt.cli", "--version"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"bbt {__version__}"


def test_python_m_bbt_cli_refuses_an_unknown_command() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "bbt.cli", "no-such-command"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "no-such-command" in done.stderr
