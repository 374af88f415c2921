"""A password in the service URL (``http://user:pass@host``) is never written anywhere a
run records its service: the manifest, prompt_ids.json, history, logs (issue 18, item 7)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bbt.client import Client
from bbt.server._core import ServiceCore
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.server.registry import PromptRegistry
from bbt.server.settings import ServerSettings
from bbt.testing import CoreTransport
from bbt.tuner import Example, TunedPrompt, get_preset, sample_k_shot, tune
from bbt.tuner.predict import PROMPT_IDS

from .conftest import H, small_config

PASSWORD = "pw-of-the-url-93c1"
URL = f"http://bbt-user:{PASSWORD}@registry-secrets.test"


def test_a_run_and_its_predictions_never_record_the_url_password(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = PromptRegistry(tmp_path / "registry.sqlite3")
    # No server keys: httpx sends a URL's user:pass as Basic auth, which replaces a Bearer key.
    core = ServiceCore(MockBackend(hidden_size=H), ServerSettings(api_keys=[]), registry)
    run = tmp_path / "run"
    pool = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    train, dev = sample_k_shot(pool, 16, 1, 2)
    try:
        with (
            caplog.at_level(logging.DEBUG),
            Client(URL, transport=CoreTransport(core), env_file=None) as client,
        ):
            tune(client, get_preset("mock"), train, dev, small_config(budget=16), run_dir=run)
            prompt = TunedPrompt.load(run, client)
            prompt.predict([t for t, _ in sample_mock_dataset(4, 5)])
            assert prompt.last_path == "id"
    finally:
        registry.close()
    assert (run / PROMPT_IDS).is_file()
    assert "registry-secrets.test" in (run / PROMPT_IDS).read_text()
    for path in run.rglob("*"):
        if path.is_file():
            assert PASSWORD.encode() not in path.read_bytes(), path.name
            assert b"bbt-user" not in path.read_bytes(), path.name
    assert PASSWORD not in caplog.text
