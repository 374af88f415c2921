"""The probe methods on the mock: z = 0 is the plain probe, and a run's saved head predicts
the same after reload."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.tuner import Candidate, Example, TunedPrompt, methods, tune
from bbt.tuner.inputs import TunerInputs
from bbt.tuner.methods.probe import (
    PROBE_TUNED,
    PlainProbeMethod,
    PlainProbeTuner,
    ProbeTuner,
    TunedProbeMethod,
)
from bbt.tuner.probe_head import HEAD_JSON, HEAD_NPZ, ProbeHead, cv_score, head_logits

from ..conftest import small_config
from ..fakes import WordService

Split = tuple[list[Example], list[Example]]


def test_both_methods_are_registered() -> None:
    assert {"probe", "probe-tuned"} <= set(methods.available())
    assert methods.get("probe").cost(small_config(), has_dev=True).train_calls == 0


def test_both_methods_default_to_the_centroid_head() -> None:
    # docs/quality.md: on MiniLM the centroid beat ridge by 2.5-4 points; plain and tuned
    # must share the default, or z = 0 would not be the plain probe.
    assert getattr(methods.get("probe"), "head", None) == "centroid"
    assert getattr(methods.get("probe-tuned"), "head", None) == "centroid"


def test_z0_of_the_tuned_probe_is_exactly_the_plain_probe(
    service: LocalClient, mock_task: object, split: Split
) -> None:
    train, dev = split
    plain = methods.build_tuner(service, mock_task, train, dev, small_config(method="probe"))
    tuned = methods.build_tuner(service, mock_task, train, dev, small_config(method="probe-tuned"))
    assert isinstance(plain, PlainProbeTuner)
    assert isinstance(tuned, ProbeTuner)
    before = service.usage.calls
    sel = plain.run()
    assert service.usage.calls - before == 1  # one features pass (train + dev), no tuning
    assert plain.calls == 0
    assert plain.dev_calls == 1
    assert not sel.z.any()
    tuned.start()
    assert tuned.initial_dev_metric == plain.initial_dev_metric
    z0 = np.zeros(tuned.config.dim)
    a, b = plain.head_for(z0), tuned.head_for(z0)
    for name in ("mean", "coef", "intercept"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.kind, a.c, a.scale) == (b.kind, b.c, b.scale)
    loss, _ = tuned.evaluate(z0[None])
    assert loss[0] == a.extra["cv_log_loss"]


def test_the_tuned_probe_scores_moved_prompts(
    service: LocalClient, mock_task: object, split: Split
) -> None:
    train, dev = split
    tuner = methods.build_tuner(
        service, mock_task, train, dev, small_config(method="probe-tuned", budget=16)
    )
    pop = tuner.ask()
    loss, acc = tuner.evaluate(pop)
    assert loss.shape == acc.shape == (8,)
    assert np.isfinite(loss).all()
    assert len(set(loss.tolist())) > 1  # z changes the features, so the loss


def test_a_saved_head_predicts_the_same_after_reload(
    tmp_path: Path, service: LocalClient, mock_task: object, split: Split
) -> None:
    train, dev = split
    cfg = small_config(method="probe-tuned", budget=16, eval_every=8)
    result = tune(service, mock_task, train, dev, cfg, run_dir=tmp_path / "run", plot=False)
    run = tmp_path / "run"
    assert (run / HEAD_JSON).is_file()
    assert (run / HEAD_NPZ).is_file()
    texts = [e.fields["text"] for e in dev]
    loaded = TunedPrompt.load(run, service)
    assert loaded.head is not None
    got = loaded.logits(texts)
    assert loaded.last_path == "features"
    # The same head, rebuilt from the run's selected z in a fresh tuner, predicts the same.
    fresh = methods.build_tuner(service, mock_task, train, dev, cfg)
    assert isinstance(fresh, ProbeTuner)
    head = fresh.head_for(result.z)
    rendered = [mock_task.render_for(service.model_info(), {"text": t}) for t in texts]  # type: ignore[attr-defined]
    want = head_logits(head, service, result.prompt, rendered)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    again = ProbeHead.load(run)
    np.testing.assert_array_equal(again.coef, head.coef)
    assert loaded.evaluate(dev)["n"] == len(dev)


def test_a_service_without_features_is_refused(mock_task: object, split: Split) -> None:
    train, dev = split
    with pytest.raises(ConfigurationError, match="features"):
        methods.build_tuner(
            WordService(), mock_task, train, dev, small_config(method="probe-tuned")
        )


def test_a_candidate_that_fits_the_shots_worse_than_z0_is_never_dev_scored(
    service: LocalClient, mock_task: object, split: Split
) -> None:
    train, dev = split
    tuner = methods.build_tuner(service, mock_task, train, dev, small_config(method="probe-tuned"))
    assert isinstance(tuner, ProbeTuner)
    tuner.start()
    z = np.ones(tuner.config.dim)
    tuner._state.best_train = Candidate(z, tuner.z0_loss() + 1e-9, 8)
    before = service.usage.calls
    assert tuner.evaluate_dev(z) == (-math.inf, math.inf)
    assert service.usage.calls == before  # nothing was sent
    tuner._state.best_train = Candidate(z, tuner.z0_loss() - 1.0, 8)
    metric, _ = tuner.evaluate_dev(z)
    assert math.isfinite(metric)
    assert service.usage.calls == before + 1


def test_the_loo_objective_keeps_z0_the_plain_probe(
    service: LocalClient, mock_task: Any, split: Split
) -> None:
    train, dev = split

    def inputs(method: str) -> TunerInputs:
        return TunerInputs(service, mock_task, train, dev, small_config(method=method))

    plain = PlainProbeMethod(objective="loo").build(inputs("probe"))
    tuned = TunedProbeMethod(objective="loo").build(inputs("probe-tuned"))
    kfold = methods.build_tuner(service, mock_task, train, dev, small_config(method="probe"))
    assert isinstance(plain, PlainProbeTuner)
    assert isinstance(tuned, ProbeTuner)
    assert isinstance(kfold, PlainProbeTuner)
    plain.run()
    tuned.start()
    kfold.run()
    z0 = np.zeros(tuned.config.dim)
    a, b = plain.head_for(z0), tuned.head_for(z0)
    for name in ("mean", "coef", "intercept"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert (a.kind, a.c, a.scale) == (b.kind, b.c, b.scale)
    loss, _ = tuned.evaluate(z0[None])
    feats = tuned.features(z0, tuned.train_texts)[0]
    k = mock_task.num_classes
    expected = cv_score(feats, tuned.train_labels, k, kind="centroid", objective="loo")[0]
    assert loss[0] == a.extra["cv_log_loss"] == expected
    assert expected != kfold.head_for(z0).extra["cv_log_loss"]  # the option is used
    assert PROBE_TUNED.manifest_extra(tuned) == {"probe": {"head": "centroid", "pooling": "mean"}}
    assert TunedProbeMethod(objective="loo").manifest_extra(tuned)["probe"]["objective"] == "loo"
