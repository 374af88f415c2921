"""TunedPrompt (and bbt predict / eval) use the service's prompt registry when it has one.

The prompt is stored on first use, its id recorded in the run directory and reused by later
processes; predictions then upload only their texts. An id the service no longer knows is
replaced once; a service without the registry, or a full one, gets the prompt as before.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from bbt.client import Client
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.server.registry import PromptRegistry, RegistryLimits
from bbt.server.settings import ServerSettings
from bbt.testing import CoreTransport
from bbt.tuner import Example, TunedPrompt, get_preset, sample_k_shot, tune
from bbt.tuner.predict import PROMPT_IDS

from .conftest import H, small_config

KEY_A = "sk-predict-a-71c3e0"
KEY_B = "sk-predict-b-2f9a44"
URL = "http://registry-predict.test"
TEXTS = [t for t, _ in sample_mock_dataset(8, 5)]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("predict-registry") / "run"
    pool = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    train, dev = sample_k_shot(pool, 16, 1, 2)
    with Client(URL, transport=CoreTransport(MockBackend(hidden_size=H)), env_file=None) as c:
        tune(c, get_preset("mock"), train, dev, small_config(budget=16), run_dir=out)
    # A tiny budget keeps the zero start; give the run a prompt with every entry in use, so
    # predictions by id and by upload are compared on something that moves the logits.
    prompt = np.load(out / "prompt.npy")
    rng = np.random.default_rng(7)
    np.save(out / "prompt.npy", (rng.standard_normal(prompt.shape) * 0.1).astype(np.float32))
    return out


@pytest.fixture
def run(finished_run: Path, tmp_path: Path) -> Path:
    """A private copy: the tests write prompt_ids.json into it."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


class Server:
    """An in-process server core with a registry on disk, and clients for it."""

    def __init__(self, path: Path, limits: RegistryLimits | None = None, on: bool = True):
        from bbt.server._core import ServiceCore

        self.registry = PromptRegistry(path, limits) if on else None
        settings = ServerSettings(api_keys=[SecretStr(KEY_A), SecretStr(KEY_B)])
        self.core = ServiceCore(MockBackend(hidden_size=H), settings, self.registry)
        self.clients: list[Client] = []

    def client(self, key: str = KEY_A) -> Client:
        client = Client(URL, key, transport=CoreTransport(self.core), env_file=None)
        self.clients.append(client)
        return client

    def stored(self, key: str = KEY_A) -> int:
        assert self.registry is not None
        return self.registry.usage(self.registry.tenant_of(key))[0]

    def close(self) -> None:
        for client in self.clients:
            client.close()
        if self.registry is not None:
            self.registry.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "registry.sqlite3")
    yield s
    s.close()


def _ids(run: Path) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = json.loads((run / PROMPT_IDS).read_text())["prompts"]
    return entries


def _probs(preds: list[Any]) -> list[dict[str, float]]:
    return [p.probs for p in preds]


def test_predictions_go_by_id_and_match_uploading(run: Path, server: Server) -> None:
    client = server.client()
    tp = TunedPrompt.load(run, client)
    by_id = tp.predict(TEXTS)
    assert tp.last_path == "id"
    assert tp.prompt_id is not None
    assert server.stored() == 1
    [entry] = _ids(run)
    assert entry["prompt_id"] == tp.prompt_id
    assert entry["base_url"] == URL
    assert entry["model"] == "bbt-mock"
    assert KEY_A not in (run / PROMPT_IDS).read_text()

    uploaded = TunedPrompt.load(run, client, use_registry=False)
    assert _probs(uploaded.predict(TEXTS)) == _probs(by_id)  # bitwise: same float32 prompt
    assert uploaded.last_path == "upload"
    assert tp.evaluate([Example({"text": t}, 1) for t in TEXTS]) == uploaded.evaluate(
        [Example({"text": t}, 1) for t in TEXTS]
    )


def test_bytes_up_per_predict_call(run: Path, server: Server) -> None:
    """The figure docs/server.md quotes at paper scale, checked here at the test's scale:
    by id, a predict call uploads its texts and a few hundred bytes of JSON."""
    client = server.client()
    tp = TunedPrompt.load(run, client)
    tp.predict(TEXTS)  # stores the prompt
    before = client.usage.copy()
    tp.predict(TEXTS)
    by_id = client.usage - before
    uploaded = TunedPrompt.load(run, client, use_registry=False)
    before = client.usage.copy()
    uploaded.predict(TEXTS)
    sent = client.usage - before
    text_bytes = sum(len(json.dumps(t)) for t in tp._inputs(TEXTS))
    prompt_b64 = 4 * -(-tp.prompt.nbytes // 3)
    assert by_id.requests == 1
    assert text_bytes < by_id.bytes_sent < text_bytes + 300
    assert sent.bytes_sent > prompt_b64 + text_bytes
    assert sent.bytes_sent - by_id.bytes_sent >= prompt_b64


def test_a_later_process_reuses_the_recorded_id(run: Path, server: Server) -> None:
    first = TunedPrompt.load(run, server.client())
    first.predict(TEXTS[:2])
    later_client = server.client()
    later = TunedPrompt.load(run, later_client)
    later.predict(TEXTS[:2])
    assert later.prompt_id == first.prompt_id
    assert later.last_path == "id"
    assert server.stored() == 1
    # One model discovery, tokenize, the GET that checks the id, then the logits call.
    assert later_client.usage.requests == 4


def test_a_deleted_id_is_stored_again_once(run: Path, server: Server) -> None:
    client = server.client()
    tp = TunedPrompt.load(run, client)
    expected = _probs(tp.predict(TEXTS))
    old = tp.prompt_id
    assert old is not None
    client.delete_prompt(old)
    assert _probs(tp.predict(TEXTS)) == expected  # mid-process: the 404 on logits
    assert tp.last_path == "id"
    assert tp.prompt_id not in (None, old)
    assert _ids(run)[0]["prompt_id"] == tp.prompt_id
    # And in a later process, from the run directory's record.
    assert tp.prompt_id is not None
    client.delete_prompt(tp.prompt_id)
    later = TunedPrompt.load(run, server.client())
    assert _probs(later.predict(TEXTS)) == expected
    assert later.prompt_id not in (None, old, tp.prompt_id)
    assert server.stored() == 1


def test_another_key_stores_its_own_copy(run: Path, server: Server) -> None:
    a = TunedPrompt.load(run, server.client(KEY_A))
    expected = _probs(a.predict(TEXTS))
    # The run directory now names key A's id; key B cannot see it (404), so stores its own.
    b = TunedPrompt.load(run, server.client(KEY_B))
    assert _probs(b.predict(TEXTS)) == expected
    assert b.last_path == "id"
    assert b.prompt_id != a.prompt_id
    assert server.stored(KEY_A) == 1
    assert server.stored(KEY_B) == 1
    assert a.prompt_id is not None
    assert server.client(KEY_A).get_prompt(a.prompt_id).id == a.prompt_id


def test_a_record_naming_another_prompt_is_not_trusted(run: Path, server: Server) -> None:
    client = server.client()
    tp = TunedPrompt.load(run, client)
    expected = _probs(tp.predict(TEXTS))
    other = client.store_prompt(np.zeros_like(tp.prompt)).id
    entries = _ids(run)
    entries[0]["prompt_id"] = other  # the digest still claims to be this run's prompt
    (run / PROMPT_IDS).write_text(json.dumps({"version": 1, "prompts": entries}))
    later = TunedPrompt.load(run, server.client())
    assert _probs(later.predict(TEXTS)) == expected
    assert later.prompt_id == tp.prompt_id  # the service's digest check caught the swap


def test_no_registry_means_upload_and_no_record(run: Path, tmp_path: Path) -> None:
    plain = Server(tmp_path / "unused.sqlite3", on=False)
    try:
        tp = TunedPrompt.load(run, plain.client())
        tp.predict(TEXTS)
        assert tp.last_path == "upload"
        assert tp.prompt_id is None
        assert not (run / PROMPT_IDS).exists()
    finally:
        plain.close()


def test_a_full_registry_means_upload(
    run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    full = Server(tmp_path / "full.sqlite3", RegistryLimits(max_prompts=1))
    try:
        client = full.client()
        client.store_prompt(np.full((5, H), 0.01, dtype=np.float32))  # another prompt
        tp = TunedPrompt.load(run, client)
        with caplog.at_level("WARNING", logger="bbt.tuner"):
            preds = tp.predict(TEXTS)
        assert len(preds) == len(TEXTS)
        assert tp.last_path == "upload"
        assert "did not keep the prompt" in caplog.text
        before = client.usage.requests
        tp.predict(TEXTS)  # no second store attempt
        assert client.usage.requests - before == 1
    finally:
        full.close()


def test_an_unwritable_run_directory_only_costs_the_record(
    run: Path, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*_: Any, **__: Any) -> Any:
        raise PermissionError(13, "Permission denied")

    # The record is written by _rundir.atomic_write: its temp file cannot be made.
    monkeypatch.setattr("bbt.tuner.rundir.tempfile.mkstemp", refuse)
    tp = TunedPrompt.load(run, server.client())
    tp.predict(TEXTS)
    assert tp.last_path == "id"
    assert not (run / PROMPT_IDS).exists()


def test_bbt_predict_and_eval_use_the_id(run: Path, tmp_path: Path) -> None:
    from bbt.cli import app
    from bbt.server.app import create_app
    from bbt.testing import LiveServer

    registry = PromptRegistry(tmp_path / "cli.sqlite3")
    settings = ServerSettings(api_keys=[])
    runner = CliRunner()
    data = tmp_path / "data.tsv"
    data.write_text("text\tlabel\n" + "".join(f"{t}\t1\n" for t in TEXTS))
    try:
        with LiveServer(
            create_app(MockBackend(hidden_size=H), settings, registry=registry)
        ) as live:
            args = ["--base-url", live.base_url]
            first = runner.invoke(app, ["predict", str(run), TEXTS[0], *args])
            assert first.exit_code == 0, first.output
            [entry] = _ids(run)
            assert entry["base_url"] == live.base_url
            again = runner.invoke(app, ["eval", str(run), "--data", str(data), *args])
            assert again.exit_code == 0, again.output
            assert _ids(run) == [entry]  # the recorded id was reused, not replaced
            assert registry.usage(registry.tenant_of(None))[0] == 1
            upload = runner.invoke(app, ["predict", str(run), TEXTS[0], "--upload-prompt", *args])
            assert upload.exit_code == 0, upload.output
            assert json.loads(upload.stdout)["probs"] == json.loads(first.stdout)["probs"]
    finally:
        registry.close()


class FaultyDB:
    """The registry's connection, with statements starting with ``fail_on`` raising
    SQLite's ``error`` (a full or failing disk under a running server)."""

    def __init__(self, real: sqlite3.Connection, message: str, fail_on: str) -> None:
        self.real = real
        self.message = message
        self.fail_on = fail_on

    def execute(self, sql: str, *args: Any) -> Any:
        if sql.lstrip().upper().startswith(self.fail_on):
            raise sqlite3.OperationalError(self.message)
        return self.real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize(
    ("message", "fail_on", "stored_first"),
    [
        ("database or disk is full", "INSERT", False),  # the store call fails
        ("attempt to write a readonly database", "BEGIN", False),
        ("disk I/O error", "SELECT", True),  # the recorded id cannot be checked nor used
    ],
)
def test_a_failing_registry_means_upload_with_one_warning(
    run: Path,
    server: Server,
    caplog: pytest.LogCaptureFixture,
    message: str,
    fail_on: str,
    stored_first: bool,
) -> None:
    assert server.registry is not None
    client = Client(URL, KEY_A, transport=CoreTransport(server.core), env_file=None, max_retries=0)
    if stored_first:
        TunedPrompt.load(run, client).predict(TEXTS[:1])  # stores it and records the id
        assert _ids(run)
    want = _probs(TunedPrompt.load(run, client, use_registry=False).predict(TEXTS))
    server.registry._db = FaultyDB(server.registry._db, message, fail_on)  # type: ignore[assignment]
    tp = TunedPrompt.load(run, client)
    with caplog.at_level("WARNING", logger="bbt.tuner"):
        preds = tp.predict(TEXTS)
    assert _probs(preds) == want
    assert tp.last_path == "upload"
    warnings = [r for r in caplog.records if r.name == "bbt.tuner" and r.levelname == "WARNING"]
    assert len(warnings) == 1
    assert "503" in warnings[0].getMessage()
    assert "sending the prompt with each request" in warnings[0].getMessage()
    before = client.usage.requests
    tp.predict(TEXTS)  # the registry is not asked again by this TunedPrompt
    assert client.usage.requests - before == 1
