"""--init run:DIR and --init prompt:ID: a finished run's selected prompt, or a prompt in the
service's registry (shared by its operator, protocol 1.4), is the next run's p0, on the same
model and prompt length only; the manifest records where p0 came from; resume works."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr

from bbt.client import Client, LocalClient
from bbt.errors import ConfigurationError
from bbt.server import ServerSettings
from bbt.server._core import ServiceCore
from bbt.server.mock import MockBackend
from bbt.server.registry import PromptRegistry
from bbt.server.shared_prompts import SHARED_TENANT, publish
from bbt.testing import CoreTransport
from bbt.tuner import Example, InitialPrompt, Task, resume, tune
from bbt.tuner.manifest import HISTORY, read_manifest
from bbt.tuner.options import TuneOptions
from bbt.tuner.records import GenerationRecord
from bbt.tuner.transfer import model_fingerprint, prompt_sha256, publication

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]


@pytest.fixture
def source_run(tmp_path: Path, mock_task: Task, split: Split) -> Path:
    run = tmp_path / "source"
    tune(LocalClient(MockBackend(hidden_size=H)), mock_task, *split, small_config(), run_dir=run)
    return run


def test_a_run_starts_from_another_runs_prompt(
    tmp_path: Path, source_run: Path, mock_task: Task, split: Split
) -> None:
    service = LocalClient(MockBackend(hidden_size=H))
    prompt = np.load(source_run / "prompt.npy")
    opts = TuneOptions(config=small_config(seed=5), init=f"run:{source_run}")
    res = tune(service, mock_task, *split, opts, run_dir=tmp_path / "target")
    np.testing.assert_array_equal(np.load(tmp_path / "target" / "p0.npy"), prompt)
    recorded = read_manifest(tmp_path / "target")["initial_prompt"]
    assert recorded["kind"] == "run"
    assert recorded["path"] == str(source_run)
    assert recorded["sha256"] == prompt_sha256(prompt)
    assert recorded["model"] == model_fingerprint(service.model_info())
    # p0 is scored first: the new run's initial dev metric is the source's selected prompt's.
    assert res.manifest is not None
    assert InitialPrompt.from_dict(recorded).kind == "run"


def test_a_prompt_of_another_model_is_refused(
    source_run: Path, mock_task: Task, split: Split
) -> None:
    other = LocalClient(MockBackend(hidden_size=H, model_id="mock-other"))
    with pytest.raises(ConfigurationError, match=r"another model .*fingerprint"):
        tune(
            other,
            mock_task,
            *split,
            small_config(),
            initial_prompt=InitialPrompt.parse(f"run:{source_run}"),
        )


def test_another_prompt_length_is_refused(source_run: Path, mock_task: Task, split: Split) -> None:
    service = LocalClient(MockBackend(hidden_size=H))
    with pytest.raises(ConfigurationError, match=r"shape \[5, 32\].*--n-tokens 5"):
        tune(
            service, mock_task, *split, small_config(n_tokens=7),
            initial_prompt=InitialPrompt.parse(f"run:{source_run}"),
        )  # fmt: skip


def test_an_unfinished_or_missing_run_is_one_clear_error(
    tmp_path: Path, source_run: Path, mock_task: Task, split: Split
) -> None:
    service = LocalClient(MockBackend(hidden_size=H))
    init = InitialPrompt.parse(f"run:{tmp_path / 'nowhere'}")
    with pytest.raises(ConfigurationError, match="not a run directory"):
        tune(service, mock_task, *split, small_config(), initial_prompt=init)
    (source_run / "prompt.npy").unlink()
    with pytest.raises(ConfigurationError, match=r"has no prompt\.npy"):
        tune(
            service,
            mock_task,
            *split,
            small_config(),
            initial_prompt=InitialPrompt.parse(f"run:{source_run}"),
        )


def test_fingerprint_reads_old_manifests_as_masked() -> None:
    info = LocalClient(MockBackend(hidden_size=H)).model_info()
    old = {"id": info.id, "hidden_size": H, "vocab_size": info.vocab_size}
    assert model_fingerprint(old) == model_fingerprint(info)
    assert model_fingerprint({**old, "hidden_size": H + 1}) != model_fingerprint(info)


# --------------------------------------------------------------------------- prompt:ID

KEY_A, KEY_B = "sk-operator-side-aaaa", "sk-user-side-bbbb"


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    store = PromptRegistry(tmp_path / "registry.sqlite3")
    yield store
    store.close()


def _client(registry: PromptRegistry, key: str = KEY_B, **backend: Any) -> Client:
    settings = ServerSettings(api_keys=[SecretStr(KEY_A), SecretStr(KEY_B)])
    core = ServiceCore(MockBackend(hidden_size=H, **backend), settings, registry)
    return Client("http://bbt.test", api_key=key, transport=CoreTransport(core), env_file=None)


def _share(registry: PromptRegistry, run: Path) -> str:
    prompt, model, meta = publication(str(run))
    return publish(registry, prompt, model=model, metadata=meta, label="source")[0].id


def _stop_after(n: int) -> Any:
    def cb(rec: GenerationRecord) -> None:
        if rec.generation == n:
            raise KeyboardInterrupt

    return cb


def test_a_run_starts_from_a_shared_prompt_and_resumes(
    tmp_path: Path, source_run: Path, registry: PromptRegistry, mock_task: Task, split: Split
) -> None:
    prompt_id = _share(registry, source_run)
    prompt = np.load(source_run / "prompt.npy")
    opts = TuneOptions(config=small_config(seed=5), init=f"prompt:{prompt_id}")
    with _client(registry) as service:  # another key than the operator's: shared to all
        full = tune(service, mock_task, *split, opts, run_dir=tmp_path / "full")
        fingerprint = model_fingerprint(service.model_info())
    np.testing.assert_array_equal(np.load(tmp_path / "full" / "p0.npy"), prompt)
    recorded = read_manifest(tmp_path / "full")["initial_prompt"]
    assert recorded["kind"] == "prompt"
    assert recorded["prompt_id"] == prompt_id
    assert recorded["sha256"] == prompt_sha256(prompt)
    assert recorded["model"] == fingerprint
    run = tmp_path / "cut"
    with _client(registry) as service, pytest.raises(KeyboardInterrupt):
        tune(service, mock_task, *split, opts, run_dir=run, callbacks=[_stop_after(4)])
    assert read_manifest(run)["status"] == "interrupted"
    with _client(registry) as service:
        res = resume(run, service)
    assert res.z.tobytes() == full.z.tobytes()
    assert res.prompt.tobytes() == full.prompt.tobytes()
    strip = lambda p: [  # noqa: E731
        {k: v for k, v in json.loads(x).items() if k != "wall_time"}
        for x in (p / HISTORY).read_text().splitlines()
    ]
    assert strip(tmp_path / "full") == strip(run)


def test_a_shared_prompt_of_another_model_or_length_is_refused(
    tmp_path: Path, registry: PromptRegistry, mock_task: Task, split: Split
) -> None:
    other = tmp_path / "other"
    backend = MockBackend(hidden_size=H, model_id="mock-other")
    tune(LocalClient(backend), mock_task, *split, small_config(), run_dir=other)
    prompt, _, meta = publication(str(other))
    # Published under the served model's id, but its fingerprint says where it was tuned.
    served_id = MockBackend(hidden_size=H).info.id
    wrong = publish(registry, prompt, model=served_id, metadata=meta)[0].id
    with _client(registry) as service, pytest.raises(ConfigurationError, match="another model"):
        tune(service, mock_task, *split, TuneOptions(config=small_config(), init=f"prompt:{wrong}"))
    with _client(registry, model_id="mock-other") as service:
        opts = TuneOptions(config=small_config(n_tokens=7), init=f"prompt:{wrong}")
        with pytest.raises(ConfigurationError, match=r"shape \[5, 32\].*--n-tokens 5"):
            tune(service, mock_task, *split, opts)


def test_a_missing_prompt_is_one_clear_error_and_a_removed_one_still_resumes(
    tmp_path: Path, source_run: Path, registry: PromptRegistry, mock_task: Task, split: Split
) -> None:
    missing = TuneOptions(config=small_config(), init="prompt:bp_" + "x" * 22)
    with _client(registry) as service, pytest.raises(ConfigurationError, match="no such prompt"):
        tune(service, mock_task, *split, missing)
    prompt_id = _share(registry, source_run)
    run = tmp_path / "cut"
    opts = TuneOptions(config=small_config(), init=f"prompt:{prompt_id}")
    with _client(registry) as service, pytest.raises(KeyboardInterrupt):
        tune(service, mock_task, *split, opts, run_dir=run, callbacks=[_stop_after(2)])
    assert registry.delete(SHARED_TENANT, prompt_id)  # the operator took it back
    with _client(registry) as service:  # a started run keeps its copy of p0 (p0.npy)
        res = resume(run, service)
    assert read_manifest(run)["status"] == "completed"
    assert read_manifest(run)["initial_prompt"]["prompt_id"] == prompt_id
    assert res.z.shape == (20,)


def test_a_service_without_shared_prompts_says_so(
    source_run: Path, registry: PromptRegistry, mock_task: Task, split: Split, word_service: Any
) -> None:
    prompt_id = _share(registry, source_run)
    init = InitialPrompt.parse(f"prompt:{prompt_id}")
    with pytest.raises(ConfigurationError, match="does not hand out registry prompts"):
        tune(word_service, mock_task, *split, small_config(), initial_prompt=init)


def test_a_keys_own_stored_prompt_and_the_in_process_client(
    tmp_path: Path, source_run: Path, registry: PromptRegistry, mock_task: Task, split: Split
) -> None:
    prompt = np.load(source_run / "prompt.npy")
    with _client(registry, key=KEY_A) as owner:
        own = owner.store_prompt(prompt).id
        opts = TuneOptions(config=small_config(budget=16), init=f"prompt:{own}")
        tune(owner, mock_task, *split, opts, run_dir=tmp_path / "own")
    assert read_manifest(tmp_path / "own")["initial_prompt"]["prompt_id"] == own
    np.testing.assert_array_equal(np.load(tmp_path / "own" / "p0.npy"), prompt)
    with _client(registry, key=KEY_B) as other, pytest.raises(ConfigurationError, match="no such"):
        tune(other, mock_task, *split, opts)  # not shared: another key's prompt is not found
    shared = _share(registry, source_run)
    local = LocalClient(MockBackend(hidden_size=H), registry=registry)
    opts = TuneOptions(config=small_config(budget=16), init=f"prompt:{shared}")
    tune(local, mock_task, *split, opts, run_dir=tmp_path / "local")
    np.testing.assert_array_equal(np.load(tmp_path / "local" / "p0.npy"), prompt)


def test_prompt_specs_parse_and_round_trip() -> None:
    init = InitialPrompt.parse("prompt:bp_abcdefghijklmnopqrstuv")
    assert init.kind == "prompt"
    assert init.prompt_id == "bp_abcdefghijklmnopqrstuv"
    assert InitialPrompt.from_dict(init.as_dict()) == init
    assert "prompt_id" not in InitialPrompt.parse("zeros").as_dict()  # old manifests unchanged
    with pytest.raises(ConfigurationError, match="prompt:ID"):
        InitialPrompt.parse("prompt:")
