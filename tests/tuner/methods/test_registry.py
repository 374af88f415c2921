"""The method registry: names, lookup, a clear error for an unknown name, and a method a
third party registers that tunes through run, resume and the dry-run planner's questions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.protocol import DEEP_PROMPTS
from bbt.server.mock import MockBackend
from bbt.tuner import Example, Task, TuneConfig, Tuner, methods, read_manifest, resume, tune
from bbt.tuner.bbtv2 import BBTv2Tuner, make_tuner
from bbt.tuner.methods import Method, PromptLayout
from bbt.tuner.methods.shallow import BBTMethod

from ..conftest import H, small_config

Split = tuple[list[Example], list[Example]]


def test_the_built_in_methods_are_registered_in_order() -> None:
    assert methods.available()[:2] == ("bbt", "bbtv2")
    assert methods.get("bbt").name == "bbt"
    assert methods.get("bbtv2").requires == (DEEP_PROMPTS,)


def test_an_unknown_method_names_the_known_ones() -> None:
    with pytest.raises(
        ConfigurationError, match=r"unknown tuning method 'bbt3'; available: bbt, bbtv2"
    ):
        methods.get("bbt3")
    with pytest.raises(ConfigurationError, match="method must be one of bbt, bbtv2"):
        TuneConfig(method="bbt3")


def test_a_built_in_method_cannot_be_taken_or_removed() -> None:
    with pytest.raises(ConfigurationError, match="already registered"):
        methods.register(methods.get("bbt"))
    with pytest.raises(ConfigurationError, match="built-in"):
        methods.unregister("bbt")


def test_each_method_builds_its_tuner_and_declares_its_layout(
    mock_task: Task, split: Split
) -> None:
    train, dev = split
    shallow = methods.build_tuner(
        LocalClient(MockBackend(hidden_size=H)), mock_task, train, dev, small_config()
    )
    assert type(shallow) is Tuner
    layout = methods.method_of(shallow).layout(shallow)
    assert layout == PromptLayout(z_size=20, n_tokens=5, hidden_size=H)
    assert layout.shape == (5, H)
    assert not layout.deep

    deep_svc = LocalClient(MockBackend(hidden_size=H, num_layers=3))
    deep = methods.build_tuner(deep_svc, mock_task, train, dev, small_config(method="bbtv2"))
    assert isinstance(deep, BBTv2Tuner)
    layout = methods.get("bbtv2").layout(deep)
    assert (layout.z_size, layout.layers, layout.shape) == (60, 3, (3, 5, H))
    # The layout is what the tuner's prompts are.
    assert deep.prompts(np.zeros((2, layout.z_size))).shape == (2, *layout.shape)
    # make_tuner, from before the registry, asks it too.
    assert type(make_tuner(deep_svc, mock_task, train, dev, small_config())) is Tuner


def test_the_capability_check_says_what_is_missing() -> None:
    info = MockBackend(hidden_size=H).info  # one layer: no deep prompts
    methods.get("bbt").check(info)
    with pytest.raises(ConfigurationError, match="BBTv2 needs deep prompts"):
        methods.get("bbtv2").check(info)


def test_the_cost_model_counts_calls_as_a_run_spends_them() -> None:
    cfg = small_config(budget=170)  # 21 generations of 8; checks every 40 calls
    counts = methods.get("bbt").cost(cfg, has_dev=True)
    assert (counts.generations, counts.train_calls) == (21, 168)
    assert (counts.checks, counts.dev_calls_max) == (4, 6)  # p0 + 4 checks + the final
    assert methods.get("bbt").cost(cfg, has_dev=False).dev_calls_max == 0


class Scaled(BBTMethod):
    """A third-party method: BBT's tuner under its own name, with a manifest key of its own."""

    name = "scaled-test"
    summary = "BBT under another name (a test)"

    def manifest_extra(self, tuner: Tuner) -> dict[str, Any]:
        return {"scaled": True}


@pytest.fixture
def scaled() -> Iterator[Method]:
    method = methods.register(Scaled())
    yield method
    methods.unregister(method.name)


def test_a_registered_method_tunes_and_resumes(
    scaled: Method, mock_task: Task, split: Split, tmp_path: Path
) -> None:
    train, dev = split
    svc = LocalClient(MockBackend(hidden_size=H))
    cfg = small_config(method=scaled.name, budget=80)
    assert scaled.name in methods.available()
    result = tune(svc, mock_task, train, dev, cfg, run_dir=tmp_path / "run", plot=False)
    manifest = read_manifest(tmp_path / "run")
    assert manifest["method"] == "scaled-test"
    assert manifest["scaled"] is True
    # A finished run resumes to its recorded result; the same run under BBT gives the same z
    # (the method built the same tuner).
    assert resume(tmp_path / "run", svc, plot=False).z.tolist() == result.z.tolist()
    plain = tune(svc, mock_task, train, dev, small_config(budget=80), plot=False)
    assert plain.z.tolist() == result.z.tolist()
