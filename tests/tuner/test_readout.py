"""bbt.tuner.readout: label words per class, contextual calibration, label-word search."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError, TaskError
from bbt.tuner import Example, TunedPrompt, TuneOptions, tune
from bbt.tuner.losses import cross_entropy
from bbt.tuner.methods import build_tuner
from bbt.tuner.readout import (
    CONTENT_FREE,
    Readout,
    ReadoutEvaluator,
    calibrate_scores,
    class_scores,
    format_label_words,
    parse_label_words,
    search_label_words,
)

from .conftest import small_config

Split = tuple[list[Example], list[Example]]


def test_parse_label_words_by_name_or_index_in_label_order() -> None:
    labels = ("negative", "positive")
    assert parse_label_words("1=great|good,negative=bad", labels) == (("bad",), ("great", "good"))
    spec = format_label_words(labels, (("bad", "awful"), ("great",)))
    assert parse_label_words(spec, labels) == (("bad", "awful"), ("great",))
    for bad, msg in [
        ("0=bad", "no word for label"),
        ("x=bad,1=good", "unknown label"),
        ("0bad,1=good", "cannot read"),
        ("0=|,1=good", "has no word"),
    ]:
        with pytest.raises(TaskError, match=msg):
            parse_label_words(bad, labels)


def test_class_score_is_the_log_sum_exp_of_the_class_words() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 5)).astype(np.float32)
    got = class_scores(logits, ((0, 3), (1,), (2, 4)))
    want = np.stack(
        [
            np.log(np.exp(logits[..., 0]) + np.exp(logits[..., 3])),
            logits[..., 1],
            np.log(np.exp(logits[..., 2]) + np.exp(logits[..., 4])),
        ],
        axis=-1,
    )
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32


def test_one_word_per_class_is_the_identity_bit_for_bit() -> None:
    logits = np.random.default_rng(1).normal(size=(4, 7, 3)).astype(np.float32)
    readout = Readout((10, 11, 12), ((0,), (1,), (2,)))
    assert readout.identity
    assert readout.request(["a", "b"]) == (["a", "b"], [10, 11, 12])
    assert readout.reduce(logits).tobytes() == logits.tobytes()


def test_calibration_is_a_no_op_when_the_content_free_logits_are_uniform() -> None:
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(3, 6, 4)).astype(np.float32)
    labels = rng.integers(0, 4, size=6)
    got = calibrate_scores(scores, np.full((3, 4), 2.5, dtype=np.float32))
    assert (got.argmax(-1) == scores.argmax(-1)).all()
    np.testing.assert_allclose(
        cross_entropy(got, labels), cross_entropy(scores, labels), rtol=1e-6, atol=1e-6
    )
    # ... and does divide a biased content-free distribution out.
    bias = np.array([[3.0, 0.0, 0.0, 0.0]] * 3, dtype=np.float32)
    shifted = calibrate_scores(scores + bias[:, None, :], bias)
    np.testing.assert_allclose(shifted, calibrate_scores(scores, np.zeros((3, 4))), atol=1e-5)


def test_search_picks_the_words_each_class_makes_likelier() -> None:
    words = ["w0", "w1", "w2", "w3", "w4", "w5"]
    labels = np.array([0, 0, 1, 1, 2, 2])
    scores = np.zeros((6, 6))
    scores[labels == 0, 3] = 4.0  # w3 for class 0, w5 a little
    scores[labels == 0, 5] = 1.0
    scores[labels == 1, 0] = 3.0
    scores[labels == 2, 1] = 5.0
    scores[:, 2] = 6.0  # likely everywhere: says nothing about any class
    got = search_label_words(scores, labels, words, 3, 2)
    assert got[0] == ("w3", "w5")
    assert got[1][0] == "w0"
    assert got[2][0] == "w1"
    assert all("w2" not in g[:1] for g in got)


class _UniformContentFree(ReadoutEvaluator):
    """The mock's own logits, except that the content-free row is made uniform."""

    def logits(self, z: Any, texts: Sequence[str], candidate_ids: Sequence[int]) -> Any:
        sent, ids = self.readout.request(texts)
        raw = np.array(self.inner.logits(z, sent, ids))
        raw[:, -1, :] = 0.75
        return self.readout.reduce(raw)


def test_calibrated_tuner_on_the_mock_scores_as_uncalibrated_under_uniform_content_free(
    service: LocalClient, mock_task: Any, split: Split
) -> None:
    train, dev = split
    plain = build_tuner(service, mock_task, train, dev, small_config())
    cal = build_tuner(service, mock_task, train, dev, small_config(calibrate=True))
    assert isinstance(cal.evaluator, ReadoutEvaluator)
    assert cal.evaluator.readout.content_free == f"{CONTENT_FREE} It was [MASK] ."
    cal.evaluator = _UniformContentFree(cal.evaluator.inner, cal.evaluator.readout)
    z = np.random.default_rng(3).normal(size=(4, 20))
    (l0, m0), (l1, m1) = plain.evaluate(z), cal.evaluate(z)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    np.testing.assert_array_equal(m1, m0)
    # With the mock's real content-free logits calibration does change the scores.
    real = build_tuner(service, mock_task, train, dev, small_config(calibrate=True))
    assert not np.allclose(real.evaluate(z)[0], l0, rtol=1e-5)


def test_the_task_words_as_label_words_tune_bit_for_bit_as_the_default(
    service: LocalClient, mock_task: Any, split: Split
) -> None:
    train, dev = split
    a = tune(service, mock_task, train, dev, small_config(budget=48))
    b = tune(service, mock_task, train, dev, small_config(budget=48, label_words="0=bad,1=great"))
    assert a.prompt.tobytes() == b.prompt.tobytes()
    assert a.z.tobytes() == b.z.tobytes()
    assert a.train_loss == b.train_loss
    assert a.dev_metric == b.dev_metric


def test_label_words_change_the_readout_and_are_one_token_each(
    service: LocalClient, mock_task: Any, split: Split
) -> None:
    train, dev = split
    tuner = build_tuner(
        service, mock_task, train, dev, small_config(label_words="0=bad|no,1=great")
    )
    assert isinstance(tuner.evaluator, ReadoutEvaluator)
    assert [len(g) for g in tuner.evaluator.readout.groups] == [2, 1]
    assert tuner.evaluate(np.zeros((1, 20)))[0].shape == (1,)
    with pytest.raises(TaskError, match="not one token"):
        build_tuner(service, mock_task, train, dev, small_config(label_words="0=bad,1=very great"))
    with pytest.raises(ConfigurationError, match="search_label_words"):
        small_config(search_label_words=-1)


def test_searched_words_are_saved_and_eval_predict_use_the_run_readout(
    service: LocalClient, mock_task: Any, split: Split, tmp_path: Path
) -> None:
    train, dev = split
    run = tmp_path / "run"
    cfg = small_config(budget=16, calibrate=True, search_label_words=2)
    tune(service, mock_task, train, dev, TuneOptions(task="mock", config=cfg), run_dir=run)
    manifest = json.loads((run / "manifest.json").read_text())
    recorded = manifest["config"]
    assert recorded["search_label_words"] == 0
    assert recorded["calibrate"] is True
    words = parse_label_words(recorded["label_words"], mock_task.labels)
    assert all(1 <= len(w) <= 2 for w in words)
    tp = TunedPrompt.load(run, service)
    assert tp.readout is not None
    assert tp.readout.content_free is not None
    inputs = [e.fields["text"] for e in dev[:5]]
    sent, ids = tp.readout.request(tp._inputs(inputs))
    raw = service.logits(tp.prompt[None], sent, ids)[0]
    np.testing.assert_array_equal(tp.logits(inputs), tp.readout.reduce(raw))
    # An old run's manifest (no readout fields) loads with the one-word readout.
    del manifest["config"]["label_words"], manifest["config"]["calibrate"]
    (run / "manifest.json").write_text(json.dumps(manifest))
    old = TunedPrompt.load(run, service)
    assert old.readout is None
    np.testing.assert_array_equal(
        old.logits(inputs),
        service.logits(tp.prompt[None], tp._inputs(inputs), old.candidate_ids)[0],
    )


def test_the_search_pool_is_asked_in_slices_of_max_candidates() -> None:
    from bbt.server.mock import MockBackend
    from bbt.tuner.readout import pool_logits

    wide = LocalClient(MockBackend(hidden_size=8))
    limits = wide.model_info().limits.model_copy(update={"max_candidates": 3})
    narrow = LocalClient(MockBackend(hidden_size=8, limits=limits))
    prompt = np.zeros((1, 2, 8), dtype=np.float32)
    ids = list(range(5, 15))
    texts = ["a b [MASK] c", "d [MASK] e"]
    got = pool_logits(narrow, prompt, texts, ids)
    assert got.shape == (2, 10)
    np.testing.assert_allclose(got, wide.logits(prompt, texts, ids)[0], rtol=1e-5, atol=1e-6)


def test_bbtv2_tunes_and_predicts_through_the_readout(
    mock_task: Any, split: Split, tmp_path: Path
) -> None:
    from bbt.server.mock import MockBackend

    svc = LocalClient(MockBackend(hidden_size=8, num_layers=2))
    train, dev = split
    cfg = small_config(method="bbtv2", budget=16, calibrate=True, label_words="0=bad|no,1=great")
    tuner = build_tuner(svc, mock_task, train, dev, cfg)
    assert isinstance(tuner.evaluator, ReadoutEvaluator)
    tune(svc, mock_task, train, dev, cfg, run_dir=tmp_path / "r")
    tp = TunedPrompt.load(tmp_path / "r", svc)
    assert tp.deep
    assert tp.readout is not None
    assert [len(g) for g in tp.readout.groups] == [2, 1]
    assert tp.logits(["a b c"]).shape == (1, 2)
