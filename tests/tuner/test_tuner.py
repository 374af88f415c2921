from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError, TaskError
from bbt.tuner import Example, GenerationRecord, Task, TuneConfig, Tuner, read_manifest, tune

from .conftest import small_config

Split = tuple[list[Example], list[Example]]


def test_learns_the_mock_task_from_chance(
    service: LocalClient, mock_task: Task, split: Split
) -> None:
    train, dev = split
    res = tune(
        service,
        mock_task,
        train,
        dev,
        small_config(n_tokens=10, dim=50, popsize=20, budget=600, eval_every=100),
    )
    assert res.initial_dev_metric is not None
    assert res.initial_dev_metric <= 0.7
    assert res.dev_metric is not None
    assert res.dev_metric >= 0.85
    assert res.calls == 600
    assert res.stop_reason == "budget"
    assert res.prompt.shape == (10, 32)


def test_one_service_call_per_generation_and_budget_in_calls(
    service: LocalClient, mock_task: Task, split: Split
) -> None:
    train, dev = split
    cfg = small_config(budget=70, popsize=8, eval_every=1000, eval_initial=False)
    tuner = Tuner(service, mock_task, train, dev, cfg)
    before = service.usage.copy()
    rec = tuner.step()
    spent = service.usage - before
    assert spent.calls == 8  # P candidates on the whole training set, one logits call
    assert rec.calls == 8
    assert rec.generation == 1
    sel = tuner.run()
    # 70 // 8 = 8 whole generations fit; a partial one never runs.
    assert tuner.calls == 64
    assert tuner.stop_reason == "budget"
    # no dev evaluation was due, so the final one picks the best candidate on dev
    assert sel.dev_metric is not None
    assert tuner.dev_calls == 1


def test_ask_tell_by_hand_matches_step(service: LocalClient, mock_task: Task, split: Split) -> None:
    train, dev = split
    a = Tuner(service, mock_task, train, dev, small_config())
    b = Tuner(service, mock_task, train, dev, small_config())
    for _ in range(3):
        a.step()
        pop = b.ask()
        assert b.ask() is pop  # asking again before tell returns the same population
        losses, metrics = b.evaluate(pop)
        b.tell(losses, metrics)
    assert a.best is not None
    assert b.best is not None
    assert np.array_equal(a.best.z, b.best.z)
    with pytest.raises(RuntimeError, match="pending"):
        b.tell([0.0] * b.popsize)
    b.ask()
    with pytest.raises(ValueError, match="one per candidate"):
        b.tell([0.0] * (b.popsize - 1))


def test_global_numpy_rng_does_not_change_a_run(
    service: LocalClient, mock_task: Task, split: Split
) -> None:
    train, dev = split
    a = Tuner(service, mock_task, train, dev, small_config())
    np.random.seed(1)
    za = [a.step() and a.best.z.copy() for _ in range(3)]  # type: ignore[union-attr]
    b = Tuner(service, mock_task, train, dev, small_config())
    zb = []
    for _ in range(3):
        np.random.seed(999)
        np.random.standard_normal(100)
        b.step()
        assert b.best is not None
        zb.append(b.best.z.copy())
    assert all(np.array_equal(x, y) for x, y in zip(za, zb, strict=True))
    assert np.random.standard_normal() == pytest.approx(
        np.random.RandomState(999).standard_normal(101)[-1]
    )


def test_early_stopping_fires_after_patience_stale_evaluations(
    service: LocalClient, mock_task: Task, split: Split
) -> None:
    train, dev = split
    records: list[GenerationRecord] = []
    patience = 2
    cfg = small_config(budget=2000, eval_every=8, patience=patience, loss="neg_accuracy")
    assert cfg.eval_every == cfg.population  # a dev evaluation is due after every generation
    tuner = Tuner(service, mock_task, train, dev, cfg, callbacks=[records.append])
    sel = tuner.run()
    assert tuner.stop_reason == "early_stopping"
    assert tuner.calls < 2000  # it stopped long before the budget
    # Stale evaluations: those that left the selection where it was (p0's is at 0 calls).
    streak, first_stop = 0, None
    previous = 0
    for i, r in enumerate(records):
        streak = streak + 1 if r.selected_calls == previous else 0
        previous = r.selected_calls
        if streak == patience and first_stop is None:
            first_stop = i
    # It stopped right after the first `patience` stale evaluations in a row, not later.
    assert first_stop == len(records) - 1
    assert any(r.selected_calls != 0 for r in records)  # the selection did move before
    assert sel.calls == records[-1].selected_calls
    best = max([tuner.initial_dev_metric or 0.0] + [r.dev_metric or 0.0 for r in records])
    assert sel.dev_metric == best
    assert [r.best_dev_metric for r in records] == sorted(r.best_dev_metric or 0 for r in records)


def test_dev_selection_ties(
    monkeypatch: pytest.MonkeyPatch, service: LocalClient, mock_task: Task, split: Split
) -> None:
    # Scripted dev scores, one new best candidate per generation, so each rule is exercised.
    script = [
        (0.5, 0.7),  # the first: selected
        (0.5, 0.8),  # equal metric, higher cross-entropy: not selected
        (0.5, 0.7),  # a full tie: the earlier selection stays
        (0.5, 0.6),  # equal metric, lower cross-entropy: selected
        (0.4, 0.1),  # lower metric (whatever its cross-entropy): not selected
        (0.6, 0.9),  # higher metric: selected
        (-math.inf, math.inf),  # non-finite dev logits: the worst, never selected
    ]
    train, dev = split
    cfg = small_config(eval_every=8, popsize=8, eval_initial=False)
    tuner = Tuner(service, mock_task, train, dev, cfg)
    scores = iter(script)
    monkeypatch.setattr(tuner, "evaluate_dev", lambda z: next(scores))
    selected = []
    for g in range(len(script)):
        tuner.ask()
        rec = tuner.tell([10.0 - g] * tuner.popsize)  # each generation's first is a new best
        assert rec.dev_metric == script[g][0]
        selected.append(rec.selected_calls)
    assert selected == [8, 8, 8, 32, 32, 48, 48]
    assert tuner.selected is not None
    assert tuner.selected.dev_metric == 0.6


def test_callback_can_stop_the_run(service: LocalClient, mock_task: Task, split: Split) -> None:
    train, dev = split
    tuner = Tuner(
        service, mock_task, train, dev, small_config(), callbacks=[lambda r: r.generation >= 2]
    )
    tuner.run()
    assert tuner.generation == 2
    assert tuner.stop_reason == "callback"


def test_bad_configs_and_inputs(service: LocalClient, mock_task: Task, split: Split) -> None:
    with pytest.raises(ConfigurationError, match="popsize"):
        TuneConfig(popsize=1)
    with pytest.raises(ConfigurationError, match="loss"):
        TuneConfig(loss="l2")
    train, dev = split
    with pytest.raises(ConfigurationError, match="at most 128"):
        Tuner(service, mock_task, train, dev, small_config(n_tokens=500))
    with pytest.raises(TaskError, match="empty"):
        Tuner(service, mock_task, [], dev, small_config())
    assert TuneConfig(popsize=None, dim=500).population == 4 + int(3 * np.log(500))


def test_a_budget_below_one_generation_is_refused() -> None:
    # It used to run no generation at all and then fail on the missing history.
    with pytest.raises(ConfigurationError, match=r"budget 8 is below one generation \(20 cand"):
        TuneConfig(budget=8, popsize=20)
    assert TuneConfig(budget=20, popsize=20).budget == 20


@pytest.mark.parametrize(
    "kw", [{"loss": "hinge"}, {"loss": "neg_f1"}, {"bound": 0.5}, {"projection": "uniform"}]
)
def test_options_run(
    service: LocalClient, mock_task: Task, split: Split, kw: dict[str, Any]
) -> None:
    train, dev = split
    tuner = Tuner(service, mock_task, train, dev, small_config(budget=32, **kw))
    tuner.run()
    assert tuner.selected is not None
    if "bound" in kw and tuner.best is not None:
        assert np.abs(tuner.best.z).max() <= 0.5


@pytest.mark.slow
def test_acceptance_mock_reaches_90_percent_within_1000_calls(tmp_path: Path) -> None:
    # The acceptance check with `bbt tune`'s defaults (n = 50, d = 500, P = 20, 16-shot) on
    # the mock model (H = 64), one seed; examples/mock_three_seeds.sh runs three. In a
    # subprocess with one BLAS thread: pycma's d = 500 eigendecomposition crawls when BLAS
    # threads fight over a busy machine.
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    code = "import sys; from bbt.cli import main; sys.argv = ['bbt', *sys.argv[1:]]; main()"
    args = ["tune", "--task", "mock", "--mock", "--seed", "1", "--budget", "1000"]
    run = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-c", code, *args, "--no-plot", "-q", "--out", str(run)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    result = read_manifest(run)["result"]
    assert result["initial_dev_accuracy"] < 0.7  # near chance: 32 dev examples, 2 classes
    assert result["dev_accuracy"] >= 0.9
    assert result["calls"] <= 1000
