"""--init run:DIR: a finished run's selected prompt is the next run's p0, on the same model
and prompt length only; the manifest records where p0 came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.server.mock import MockBackend
from bbt.tuner import Example, InitialPrompt, Task, tune
from bbt.tuner.manifest import read_manifest
from bbt.tuner.options import TuneOptions
from bbt.tuner.transfer import model_fingerprint, prompt_sha256

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
