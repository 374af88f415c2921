"""Fixtures: a small deterministic mock model in-process, its task, and a k-shot sample."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bbt.client import LocalClient
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.tuner import Example, TuneConfig, get_preset, sample_k_shot

from .fakes import WordService

H = 32


@pytest.fixture(autouse=True)
def checkpoint_key_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test (and its subprocesses) gets its own BBT_HOME, so the per-user checkpoint key
    is made there, never in the real ~/.config/bbt."""
    home = tmp_path_factory.mktemp("bbt-home")
    monkeypatch.setenv("BBT_HOME", str(home))
    return home


@pytest.fixture
def service() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=H))


@pytest.fixture
def mock_examples() -> list[Example]:
    return [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]


@pytest.fixture
def split(mock_examples: list[Example]) -> tuple[list[Example], list[Example]]:
    return sample_k_shot(mock_examples, 16, 1, 2)


def small_config(**kw: Any) -> TuneConfig:
    base: dict[str, Any] = {
        "n_tokens": 5,
        "dim": 20,
        "popsize": 8,
        "budget": 160,
        "eval_every": 40,
        "seed": 3,
    }
    base.update(kw)
    return TuneConfig(**base)


@pytest.fixture
def mock_task() -> Any:
    return get_preset("mock")


@pytest.fixture
def word_service() -> WordService:
    return WordService()
