"""The probe heads: fit, cross-validation, and the JSON + npz files (never a pickle)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bbt.errors import ConfigurationError, RunError
from bbt.tuner.probe_head import (
    C_GRID,
    HEAD_JSON,
    HEAD_KINDS,
    OBJECTIVES,
    ProbeHead,
    cv_score,
    fit_head,
)


def blobs(seed: int = 0, n: int = 12, k: int = 3, f: int = 16) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, f)) * 3
    y = np.repeat(np.arange(k), n)
    return centres[y] + rng.normal(size=(len(y), f)), y


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_every_head_separates_separable_classes(kind: str) -> None:
    x, y = blobs()
    head = fit_head(x, y, 3, kind=kind)
    assert (head.logits(x).argmax(-1) == y).mean() == 1.0
    loss, acc, c = cv_score(x, y, 3, kind=kind)
    assert acc == 1.0
    assert loss < np.log(3)  # better than chance
    assert c in (0.1, 1.0, 10.0)


def test_cv_loss_is_worse_on_shuffled_labels() -> None:
    x, y = blobs(1)
    good = cv_score(x, y, 3, kind="ridge")[0]
    bad = cv_score(x, np.random.default_rng(0).permutation(y), 3, kind="ridge")[0]
    assert bad > good


def test_cv_is_deterministic_and_needs_two_per_class() -> None:
    x, y = blobs(2)
    assert cv_score(x, y, 3) == cv_score(x, y, 3)
    with pytest.raises(ConfigurationError, match="2 training examples"):
        cv_score(x[:13], y[:13], 3)


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_a_head_round_trips_through_json_and_npz(tmp_path: Path, kind: str) -> None:
    x, y = blobs(3, k=2)
    head = fit_head(x, y, 2, kind=kind, pooling="mask")
    head.save(tmp_path)
    again = ProbeHead.load(tmp_path)
    np.testing.assert_array_equal(again.logits(x), head.logits(x))
    assert (again.kind, again.pooling) == (kind, "mask")


def test_a_bad_head_file_is_one_clear_error(tmp_path: Path) -> None:
    x, y = blobs(4)
    fit_head(x, y, 3).save(tmp_path)
    meta = json.loads((tmp_path / HEAD_JSON).read_text())
    (tmp_path / HEAD_JSON).write_text(json.dumps({**meta, "kind": "forest"}))
    with pytest.raises(RunError, match="not a probe head"):
        ProbeHead.load(tmp_path)
    (tmp_path / HEAD_JSON).write_text("{")
    with pytest.raises(RunError, match="cannot read the probe head"):
        ProbeHead.load(tmp_path)


@pytest.mark.parametrize(("seed", "k", "n"), [(0, 3, 4), (5, 2, 2), (6, 4, 3)])
def test_loo_of_the_centroid_is_the_brute_force_leave_one_out(seed: int, k: int, n: int) -> None:
    x, y = blobs(seed, n=n, k=k)
    x = x + np.random.default_rng(seed).normal(size=x.shape) * 4  # overlapping classes
    loss, acc, c = cv_score(x, y, k, kind="centroid", objective="loo")
    by_c = {}
    for cc in C_GRID:
        logps = []
        for i in range(len(y)):
            keep = np.arange(len(y)) != i
            head = fit_head(x[keep], y[keep], k, kind="centroid", c=cc)
            scores = head.logits(x[i : i + 1])[0]
            logps.append(scores - np.logaddexp.reduce(scores))
        lp = np.asarray(logps)
        by_c[cc] = (float(-lp[np.arange(len(y)), y].mean()), float((lp.argmax(-1) == y).mean()))
    best = min(C_GRID, key=lambda cc: by_c[cc][0])
    assert c == best
    assert loss == pytest.approx(by_c[best][0], rel=1e-9)
    assert acc == by_c[best][1]
    assert 0.0 < acc < 1.0  # the case is not trivial


def test_loo_needs_the_centroid_head_and_a_known_objective() -> None:
    x, y = blobs(7)
    with pytest.raises(ConfigurationError, match="centroid head"):
        cv_score(x, y, 3, kind="ridge", objective="loo")
    with pytest.raises(ConfigurationError, match="unknown probe objective"):
        cv_score(x, y, 3, kind="centroid", objective="bootstrap")
    assert OBJECTIVES[0] == "kfold"  # the default the methods use
