"""A small separable two-class task on the mock, shared by the comparison tests."""

from __future__ import annotations

import pytest

from bbt.client import LocalClient
from bbt.server.mock import MockBackend
from bbt.tuner import get_preset
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


@pytest.fixture
def mock_service() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=16))


@pytest.fixture
def deep_service() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=16, num_layers=2, deep_prompts=True))


@pytest.fixture
def task() -> Task:
    return get_preset("sst2")


@pytest.fixture
def rows() -> list[Example]:
    good = ["great fun", "a lovely film", "wonderful acting", "moving and warm"]
    bad = ["awful mess", "a boring film", "dreadful acting", "dull and cold"]
    out = []
    for i in range(40):
        words = good if i % 2 else bad
        out.append(Example({"sentence": f"{words[i % 4]} number {i}"}, i % 2))
    return out
