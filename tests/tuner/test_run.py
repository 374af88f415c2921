from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pydantic import SecretStr

from bbt.client import Client, LocalClient
from bbt.errors import APIConnectionError, ConfigurationError, RunError
from bbt.server.mock import MockBackend
from bbt.server.settings import ServerSettings
from bbt.testing import MOCK_BASE_URL, CoreTransport
from bbt.tuner import Example, Task, TunedPrompt, load_result, read_manifest, resume, tune
from bbt.tuner.run import HISTORY, load_checkpoint, safe_url

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]
API_KEY = "sk-test-7c1d9a0e5b2f44e0a1c3-do-not-store"


def test_run_directory_holds_every_artifact(
    tmp_path: Path, service: LocalClient, mock_task: Task, split: Split
) -> None:
    train, dev = split
    run = tmp_path / "run"
    res = tune(service, mock_task, train, dev, small_config(), run_dir=run, data_info={"k": 16})
    names = {p.name for p in run.iterdir()}
    assert {
        "manifest.json",
        "checkpoint.bin",
        "run.lock",
        "history.jsonl",
        "prompt.npy",
        "z.npy",
        "p0.npy",
        "train.jsonl",
        "dev.jsonl",
        "plot.png",
    } <= names
    m = read_manifest(run)
    assert m["status"] == "completed"
    assert m["model"]["id"] == "bbt-mock"
    assert m["task"]["template"] == mock_task.template
    assert m["projection"]["seed"] == 3
    assert m["projection"]["embedding_std"] == service.model_info().embedding_std
    assert m["initial_prompt"]["kind"] == "zeros"
    assert m["config"]["budget"] == 160
    assert m["data"]["k"] == 16
    assert set(m["versions"]) >= {"bbt", "numpy", "cma", "python"}
    assert m["result"]["z"] == res.z.tolist()
    assert m["result"]["dev_accuracy"] == res.dev_metric
    assert m["usage"]["calls"] == res.calls + res.dev_calls
    np.testing.assert_array_equal(np.load(run / "z.npy"), res.z)
    np.testing.assert_array_equal(np.load(run / "prompt.npy"), res.prompt)
    lines = [json.loads(x) for x in (run / HISTORY).read_text().splitlines()]
    assert [x["generation"] for x in lines] == list(range(1, res.generations + 1))
    assert lines[-1]["calls"] == res.calls
    assert any(x["dev_metric"] is not None for x in lines)
    assert (run / "plot.png").read_bytes()[:4] == b"\x89PNG"
    again = load_result(run)
    assert again.z.tolist() == res.z.tolist()
    with pytest.raises(RunError, match="already holds a run"):
        tune(service, mock_task, train, dev, small_config(), run_dir=run)


def test_no_api_key_anywhere_in_the_run_directory(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    settings = ServerSettings(api_keys=[SecretStr(API_KEY)])
    transport = CoreTransport(MockBackend(hidden_size=H), settings)
    url = f"http://user:{API_KEY}@bbt-mock.test/?key={API_KEY}"
    with Client(MOCK_BASE_URL, api_key=API_KEY, transport=transport, env_file=None) as client:
        train, dev = split
        run = tmp_path / "run"
        tune(client, mock_task, train, dev, small_config(budget=16), run_dir=run, base_url=url)
    assert read_manifest(run)["service"]["base_url"] == "http://bbt-mock.test/"
    for f in run.iterdir():
        data = f.read_bytes()
        assert API_KEY.encode() not in data, f.name
        assert b"sk-test" not in data, f.name
    assert safe_url(MOCK_BASE_URL) == MOCK_BASE_URL


def _interrupt_after(gens: int) -> object:
    def cb(rec: object) -> None:
        if getattr(rec, "generation", 0) >= gens:
            raise KeyboardInterrupt

    return cb


def test_resume_after_interrupt_gives_the_uninterrupted_result(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    train, dev = split
    cfg = small_config(budget=120, eval_every=16)
    full = tune(
        LocalClient(MockBackend(hidden_size=H)), mock_task, train, dev, cfg, run_dir=tmp_path / "a"
    )

    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        tune(
            LocalClient(MockBackend(hidden_size=H)),
            mock_task,
            train,
            dev,
            cfg,
            run_dir=run,
            callbacks=[_interrupt_after(5)],  # type: ignore[list-item]
        )
    assert read_manifest(run)["status"] == "interrupted"
    ckpt = load_checkpoint(run)
    assert ckpt is not None
    assert ckpt["generation"] == 4  # the 5th generation's checkpoint never got written
    assert len((run / HISTORY).read_text().splitlines()) == 4
    # A history line past the checkpoint (as a kill between the two writes leaves) is dropped.
    with (run / HISTORY).open("a") as fh:
        fh.write('{"generation": 5, "half-written')
    # So is the temp file of a checkpoint write that a SIGKILL cut short.
    stale = run / ".checkpoint.bin.k1ll3d.tmp"
    stale.write_bytes(b"\0" * 4096)
    res = resume(run, LocalClient(MockBackend(hidden_size=H)))
    assert not stale.exists()
    assert not list(run.glob(".*.tmp"))
    assert res.z.tobytes() == full.z.tobytes()
    assert res.metrics == full.metrics
    a = [json.loads(x) for x in (tmp_path / "a" / HISTORY).read_text().splitlines()]
    b = [json.loads(x) for x in (run / HISTORY).read_text().splitlines()]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "wall_time"} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    # resuming a completed run returns its result without running anything
    svc = LocalClient(MockBackend(hidden_size=H))
    again = resume(run, svc)
    assert again.z.tobytes() == full.z.tobytes()
    assert svc.usage.calls == 0


def test_resume_refuses_another_model(tmp_path: Path, mock_task: Task, split: Split) -> None:
    train, dev = split
    run = tmp_path / "r"
    tune(
        LocalClient(MockBackend(hidden_size=H)),
        mock_task,
        train,
        dev,
        small_config(budget=16),
        run_dir=run,
    )
    with pytest.raises(RunError, match="H=32"):
        resume(run, LocalClient(MockBackend(hidden_size=64)))
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["model"]["kind"] == "masked_lm"
    # The same id and width served as a causal LM is another model for this run.
    same_id = MockBackend(hidden_size=H, causal=True, model_id=manifest["model"]["id"])
    with pytest.raises(RunError, match="made against a masked_lm model"):
        resume(run, LocalClient(same_id))
    with pytest.raises(RunError, match="not a run directory"):
        resume(tmp_path, LocalClient(MockBackend(hidden_size=H)))


def test_tuned_prompt_predicts_and_evaluates(
    tmp_path: Path, service: LocalClient, mock_task: Task, split: Split
) -> None:
    train, dev = split
    run = tmp_path / "p"
    res = tune(
        service,
        mock_task,
        train,
        dev,
        small_config(n_tokens=10, dim=50, popsize=20, budget=400, eval_every=100),
        run_dir=run,
    )
    tp = TunedPrompt.load(run, service)
    preds = tp.predict([e.fields["text"] for e in dev[:4]] + [dict(dev[5].fields)])
    assert len(preds) == 5
    for p in preds:
        assert p.label in ("negative", "positive")
        assert sum(p.probs.values()) == pytest.approx(1.0)
        assert p.probs[p.label] == max(p.probs.values())
    ev = tp.evaluate(dev)
    assert ev["n"] == len(dev)
    assert ev["accuracy"] == pytest.approx(res.dev_metric)
    with pytest.raises(RunError, match="tuned for model"):
        TunedPrompt.load(run, LocalClient(MockBackend(hidden_size=64)))


def test_tuned_prompt_without_a_service_needs_a_url(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    service: LocalClient,
    mock_task: Task,
    split: Split,
) -> None:
    monkeypatch.delenv("BBT_BASE_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    train, dev = split
    run = tmp_path / "u"
    tune(service, mock_task, train, dev, small_config(budget=16), run_dir=run)
    tp = TunedPrompt.load(run)
    with pytest.raises(ConfigurationError, match="BBT_BASE_URL"):
        tp.predict(["vate sato"])


def test_an_unreachable_service_leaves_no_run_directory(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    run = tmp_path / "run"
    with (
        Client("http://127.0.0.1:9", max_retries=0, env_file=None) as client,
        pytest.raises(APIConnectionError),
    ):
        tune(client, mock_task, *split, small_config(), run_dir=run)
    assert not run.exists()
