"""``bbt mock-server``: serves, and fails with one clear line (no traceback) when it cannot."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from typer.testing import CliRunner

from bbt.cli import app

runner = CliRunner()


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(1)
        yield sock.getsockname()[1]


def test_busy_port_is_a_clear_error(busy_port: int) -> None:
    result = runner.invoke(app, ["mock-server", "--port", str(busy_port)])
    assert result.exit_code == 3
    assert "already in use" in result.output
    assert "Traceback" not in result.output


def test_bad_fault_rates_are_a_clear_error() -> None:
    result = runner.invoke(app, ["mock-server", "--rate-503", "0.7", "--rate-drop", "0.7"])
    assert result.exit_code == 2
    assert "sum to at most 1" in result.output


def test_missing_server_extra_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # makes `import uvicorn` fail
    result = runner.invoke(app, ["mock-server"])
    assert result.exit_code == 2
    assert "pip install 'bbt[server]'" in result.output


def test_serves_until_interrupted() -> None:
    env = {**os.environ, "BBT_SERVER_API_KEYS": ""}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from bbt.cli import main; main()",
            "mock-server",
            "--port",
            "0",
            "--hidden-size",
            "32",
        ],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        base = match.group(0)
        for _ in range(100):
            try:
                r = httpx.get(f"{base}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert r.status_code == 200
        assert r.json()["data"][0]["hidden_size"] == 32
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        finally:
            if proc.stderr is not None:
                proc.stderr.close()
    # uvicorn re-raises the captured SIGINT after a clean shutdown: 130 (128 + 2) is normal.
    assert proc.returncode in (0, 130, -signal.SIGINT)
