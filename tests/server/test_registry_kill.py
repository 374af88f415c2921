"""The prompt registry survives ``kill -9`` of a real server process.

A ``bbt mock-server --registry FILE`` subprocess stores prompts while it is killed with
SIGKILL mid-stream; a new server on the same file must serve every prompt whose store call
was answered, with the same logits, and the file must pass SQLite's integrity check.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bbt.protocol import Tensor

KEY = "sk-kill-test-3b9d1c"
H = 32
pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")


class Server:
    def __init__(self, registry: Path) -> None:
        env = {**os.environ, "BBT_SERVER_API_KEYS": KEY}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from bbt.cli import main; main()",
                "mock-server",
                "--port",
                "0",
                "--hidden-size",
                str(H),
                "--registry",
                str(registry),
                "--log-level",
                "warning",
            ],
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stderr is not None
        line = self.proc.stderr.readline()
        match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        assert match, line
        assert str(registry) in line
        self.http = httpx.Client(
            base_url=match.group(0), headers={"Authorization": f"Bearer {KEY}"}, timeout=10
        )
        for _ in range(200):
            try:
                if self.http.get("/v1/models").status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.05)
        raise AssertionError("server did not start")

    def store(self, prompt: np.ndarray[Any, Any]) -> str:
        body = {"model": "bbt-mock", "prompt": Tensor.from_numpy(prompt).model_dump()}
        r = self.http.post("/v1/prompts", json=body)
        assert r.status_code == 200, r.text
        prompt_id: str = r.json()["id"]
        return prompt_id

    def logits(self, prompt_id: str) -> np.ndarray[Any, Any]:
        body = {
            "model": "bbt-mock",
            "texts": ["a fine film It was [MASK] .", "dull and long It was [MASK] ."],
            "candidate_ids": [5, 6],
        }
        r = self.http.post(f"/v1/prompts/{prompt_id}/logits", json=body)
        assert r.status_code == 200, r.text
        return Tensor.model_validate(r.json()["logits"]).to_numpy()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.http.close()
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    return tmp_path / "registry.sqlite3"


def _prompt(seed: int) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(seed).standard_normal((3, H)) * 0.05).astype(np.float32)


def test_prompts_survive_kill_9_mid_stream(registry_file: Path) -> None:
    server = Server(registry_file)
    try:
        first = server.store(_prompt(0))
        expected = server.logits(first)
        answered: dict[str, int] = {}
        stop = threading.Event()
        # Store prompts back to back from another thread and SIGKILL the server while they
        # flow, so the kill lands inside some transaction or fsync.
        writer = httpx.Client(
            base_url=str(server.http.base_url), headers=dict(server.http.headers), timeout=10
        )

        def keep_storing() -> None:
            seed = 1
            while not stop.is_set():
                body = {
                    "model": "bbt-mock",
                    "prompt": Tensor.from_numpy(_prompt(seed)).model_dump(),
                }
                try:
                    r = writer.post("/v1/prompts", json=body)
                except httpx.TransportError:
                    return  # the kill
                if r.status_code == 200:
                    answered[r.json()["id"]] = seed
                seed += 1

        thread = threading.Thread(target=keep_storing)
        thread.start()
        deadline = time.monotonic() + 10
        while len(answered) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        server.kill()
        stop.set()
        thread.join(timeout=10)
        writer.close()
        assert len(answered) >= 20
    finally:
        if server.proc.poll() is None:
            server.kill()

    db = sqlite3.connect(registry_file)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()

    again = Server(registry_file)
    try:
        # Same id, same prompt, same answer, after the crash.
        np.testing.assert_array_equal(again.logits(first), expected)
        for prompt_id, seed in answered.items():
            meta = again.http.get(f"/v1/prompts/{prompt_id}")
            assert meta.status_code == 200, (prompt_id, meta.text)
            # Storing the same bytes again finds the row that survived: the same id.
            assert again.store(_prompt(seed)) == prompt_id
    finally:
        again.kill()
