from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bbt.errors import ConfigurationError
from bbt.tuner import (
    HINGE_MARGIN,
    accuracy,
    cross_entropy,
    f1,
    get_loss,
    hinge,
    neg_accuracy,
    neg_f1,
    softmax,
)


def test_cross_entropy_matches_the_definition_per_candidate() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5, 4)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 1])
    got = cross_entropy(x, y)
    assert got.shape == (3,)
    for p in range(3):
        lp = x[p] - np.log(np.exp(x[p].astype(np.float64)).sum(axis=1, keepdims=True))
        assert got[p] == pytest.approx(-lp[np.arange(5), y].mean())


def test_cross_entropy_is_stable_for_huge_logits() -> None:
    x = np.array([[[1e4, 0.0]]])
    assert cross_entropy(x, np.array([0]))[0] == pytest.approx(0.0)
    assert cross_entropy(x, np.array([1]))[0] == pytest.approx(1e4)


def test_hinge_uses_the_paper_margin() -> None:
    assert HINGE_MARGIN == 2.0
    x = np.array([[[3.0, 2.0, 0.0], [0.0, 5.0, 4.5]]])
    y = np.array([0, 2])
    # example 0: max(0, 2-3+2)=1, max(0, 0-3+2)=0 -> 1; example 1: max(0,0-4.5+2)=0,
    # max(0, 5-4.5+2)=2.5 -> 2.5; mean 1.75
    assert hinge(x, y)[0] == pytest.approx(1.75)
    assert hinge(x, y, margin=0.0)[0] == pytest.approx(0.25)


def test_hinge_is_the_papers_sum_over_wrong_classes_not_the_max() -> None:
    """The paper's code (metrics.py of Black-Box-Tuning) adds max(0, l_j - l_y + 2) over
    every wrong class j and every example, then divides by the number of examples. With 4
    classes that differs from the max-over-wrong-classes hinge (Crammer-Singer) that the
    old quality benchmark used."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 4)) * 2
    y = rng.integers(0, 4, size=7)
    for p in range(2):
        total = 0.0
        for i in range(7):
            for j in range(4):
                if j != y[i]:
                    total += max(0.0, x[p, i, j] - x[p, i, y[i]] + 2.0)
        assert hinge(x, y)[p] == pytest.approx(total / 7)
    x = np.array([[[0.0, 0.0, 0.0, 0.0]]])
    # all 3 wrong classes at the margin: the sum is 6, the max would be 2
    assert hinge(x, np.array([0]))[0] == pytest.approx(6.0)


def test_accuracy_f1_and_their_negatives() -> None:
    x = np.array(
        [
            [[1, 0], [0, 1], [1, 0], [1, 0]],  # predicts 0,1,0,0
            [[0, 1], [0, 1], [0, 1], [0, 1]],  # predicts all 1
        ],
        dtype=np.float32,
    )
    y = np.array([0, 1, 1, 0])
    np.testing.assert_allclose(accuracy(x, y), [0.75, 0.5])
    # F1 of class 1: cand 0 tp=1 fp=0 fn=1 -> 2/3; cand 1 tp=2 fp=2 fn=0 -> 4/6
    np.testing.assert_allclose(f1(x, y), [2 / 3, 2 / 3])
    np.testing.assert_allclose(neg_accuracy(x, y), -accuracy(x, y))
    np.testing.assert_allclose(neg_f1(x, y), -f1(x, y))


def test_macro_f1_for_several_classes() -> None:
    eye = np.eye(3, dtype=np.float32)
    pred = [0, 0, 1, 2, 2, 2]
    y = np.array([0, 1, 1, 2, 2, 0])
    x = eye[pred][None]
    # class 0: tp1 fp1 fn1 -> .5 ; class 1: tp1 fp0 fn1 -> 2/3 ; class 2: tp2 fp1 fn0 -> .8
    assert f1(x, y)[0] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)


def test_ties_predict_the_lowest_class() -> None:
    x = np.zeros((1, 2, 3))
    np.testing.assert_allclose(accuracy(x, np.array([0, 1])), [0.5])


def test_loss_lookup_and_shapes() -> None:
    assert get_loss("hinge") is hinge
    with pytest.raises(ConfigurationError, match="unknown loss"):
        get_loss("mse")
    with pytest.raises(ValueError, match="labels"):
        cross_entropy(np.zeros((1, 2, 2)), np.array([0, 1, 0]))
    np.testing.assert_allclose(softmax(np.array([0.0, np.log(3.0)])), [0.25, 0.75])


@settings(max_examples=40, deadline=None)
@given(
    p=st.integers(1, 4),
    b=st.integers(1, 6),
    c=st.integers(2, 5),
    seed=st.integers(0, 2**16),
)
def test_population_results_equal_one_candidate_at_a_time(
    p: int, b: int, c: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((p, b, c)).astype(np.float32) * 3
    y = rng.integers(0, c, size=b)
    for fn in (cross_entropy, hinge, accuracy, f1):
        whole = fn(x, y)
        assert whole.shape == (p,)
        for i in range(p):
            assert whole[i] == pytest.approx(fn(x[i : i + 1], y)[0])
    # cross-entropy is never below 0 and hinge is 0 exactly when every margin holds
    assert (cross_entropy(x, y) >= 0).all()
    t = np.take_along_axis(x, np.broadcast_to(y[None, :, None], (p, b, 1)), axis=2)
    others = np.where(np.arange(c)[None, None, :] == y[None, :, None], -np.inf, x)
    holds = (t[..., 0] - others.max(axis=2) >= HINGE_MARGIN).all(axis=1)
    np.testing.assert_array_equal(hinge(x, y) == 0, holds)
