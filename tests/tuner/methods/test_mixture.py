"""The mixture method: K source prompts mixed by CMA-ES-tuned softmax weights plus A z.
It starts at the sources' mean, searches K + d numbers, resumes bit for bit, and says what
it needs in one line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.server.mock import MockBackend
from bbt.tuner import Example, InitialPrompt, Task, resume, tune
from bbt.tuner.manifest import HISTORY, read_manifest
from bbt.tuner.methods import TunerInputs, available, get
from bbt.tuner.methods.mixture import MixtureTuner
from bbt.tuner.options import TuneOptions
from bbt.tuner.records import GenerationRecord

from ..conftest import H, small_config

Split = tuple[list[Example], list[Example]]


def _service() -> LocalClient:
    return LocalClient(MockBackend(hidden_size=H))


@pytest.fixture
def sources(tmp_path: Path, mock_task: Task, split: Split) -> list[Path]:
    runs = []
    for seed in (1, 2, 3):
        run = tmp_path / f"src{seed}"
        tune(_service(), mock_task, *split, small_config(seed=seed, budget=48), run_dir=run)
        runs.append(run)
    return runs


def _opts(sources: list[Path], **kw: Any) -> TuneOptions:
    cfg = small_config(method="mixture", budget=120, eval_every=16, **kw)
    return TuneOptions(config=cfg, init="mix:" + ",".join(str(s) for s in sources))


def _interrupt_after(n: int) -> Any:
    def cb(rec: GenerationRecord) -> None:
        if rec.generation == n:
            raise KeyboardInterrupt

    return cb


def test_mixture_is_registered_and_searches_weights_with_z(
    sources: list[Path], mock_task: Task, split: Split
) -> None:
    assert "mixture" in available()
    opts = _opts(sources)
    tuner = get("mixture").build(
        TunerInputs(
            _service(), mock_task, *split, opts.config,
            initial_prompt=InitialPrompt.parse(opts.init),
        )
    )  # fmt: skip
    assert isinstance(tuner, MixtureTuner)
    assert get("mixture").layout(tuner).z_size == 20 + 3
    assert tuner.ask().shape == (8, 23)
    stack = np.stack([np.load(s / "prompt.npy") for s in sources])
    # x = 0: equal weights, no A z; p0 is that mean.
    np.testing.assert_allclose(tuner.p0, stack.mean(axis=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(tuner.prompts(np.zeros(23))[0], tuner.p0)
    # A large weight on one source gives that source (plus A z = 0).
    x = np.zeros(23)
    x[1] = 50.0
    np.testing.assert_allclose(tuner.prompts(x)[0], stack[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(tuner.weights(x), [0, 1, 0], atol=1e-12)


def test_mixture_run_resumes_bit_for_bit(
    tmp_path: Path, sources: list[Path], mock_task: Task, split: Split
) -> None:
    full = tune(_service(), mock_task, *split, _opts(sources), run_dir=tmp_path / "a")
    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        tune(
            _service(), mock_task, *split, _opts(sources), run_dir=run,
            callbacks=[_interrupt_after(5)],
        )  # fmt: skip
    assert read_manifest(run)["status"] == "interrupted"
    res = resume(run, _service())
    assert res.z.shape == (23,)
    assert res.z.tobytes() == full.z.tobytes()
    assert res.prompt.tobytes() == full.prompt.tobytes()
    assert res.metrics == full.metrics
    strip = lambda p: [  # noqa: E731
        {k: v for k, v in json.loads(x).items() if k != "wall_time"}
        for x in (p / HISTORY).read_text().splitlines()
    ]
    assert strip(tmp_path / "a") == strip(run)
    recorded = read_manifest(run)["initial_prompt"]
    assert recorded["kind"] == "mix"
    assert recorded["sources"] == [str(s) for s in sources]


def test_changed_sources_are_refused_on_resume(
    tmp_path: Path, sources: list[Path], mock_task: Task, split: Split
) -> None:
    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        tune(
            _service(), mock_task, *split, _opts(sources), run_dir=run,
            callbacks=[_interrupt_after(2)],
        )  # fmt: skip
    np.save(sources[0] / "prompt.npy", np.load(sources[0] / "prompt.npy") + 1)
    with pytest.raises(ConfigurationError, match="changed since"):
        resume(run, _service())


def test_mixture_without_sources_is_one_clear_error(mock_task: Task, split: Split) -> None:
    with pytest.raises(ConfigurationError, match="--init mix:"):
        tune(_service(), mock_task, *split, small_config(method="mixture"))
    with pytest.raises(ConfigurationError, match="at least two"):
        tune(
            _service(), mock_task, *split, small_config(method="mixture"),
            initial_prompt=InitialPrompt.parse("mix:only-one"),
        )  # fmt: skip
