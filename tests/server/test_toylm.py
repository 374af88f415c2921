"""The mock's toy bigram LM (protocol 1.6 scores): a true, deterministic distribution."""

from __future__ import annotations

import numpy as np

from bbt.server import MockBackend
from bbt.server._toylm import ToyBigramLM


def test_every_row_is_a_distribution_and_the_model_is_deterministic() -> None:
    table = MockBackend(causal=True)._table
    lm = ToyBigramLM(table, seed=0)
    np.testing.assert_allclose(np.exp(lm._logp).sum(axis=1), 1.0, rtol=1e-9)
    again = ToyBigramLM(table, seed=0)
    ids = [5, 17, 3, 99, 5]
    assert lm.score(ids) == again.score(ids)
    assert ToyBigramLM(table, seed=1).score(ids) != lm.score(ids)


def test_a_score_sums_the_transitions() -> None:
    lm = ToyBigramLM(MockBackend(causal=True)._table, seed=0)
    total, n = lm.score([4, 9, 4])
    assert n == 2
    assert total == float(lm._logp[4, 9] + lm._logp[9, 4])
    assert lm.score([4]) == (0.0, 0)
    assert lm.score([]) == (0.0, 0)
