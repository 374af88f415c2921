"""A deterministic toy language model over the mock's vocabulary: prompt log-probabilities
(protocol 1.6) for :class:`~bbt.server.mock.MockBackend` in causal mode.

A bigram model: the next token's distribution after token ``u`` is a softmax over the
vocabulary of a bilinear form of the two tokens' (unit-scale) embeddings plus a per-token
unigram bias, both fixed by the seed. It is a true distribution (each row sums to one), so
sums of its log-probabilities and the perplexities made from them behave as a real causal
LM's do: longer texts cost more, and texts made of likelier transitions cost less. It
knows nothing of language; it exists so the score operation and the clients that use it
can be tested without a model.
"""

from __future__ import annotations

from typing import Any

import numpy as np

FloatArray = np.ndarray[Any, np.dtype[np.float32]]


class ToyBigramLM:
    """``log p(v | u)`` for every pair of token ids, from the embedding ``table`` [V, H]."""

    def __init__(self, table: FloatArray, seed: int) -> None:
        # raw[u, v]: the score of next token v after token u, before the softmax.
        rng = np.random.default_rng([seed, table.shape[1], 0x5C0E])
        emb = table.astype(np.float64) / float(table.std())
        h = emb.shape[1]
        turn = rng.standard_normal((h, h)) / np.sqrt(h)
        unigram = np.asarray(rng.standard_normal(size=(emb.shape[0],)), dtype=np.float64)
        raw = np.asarray(0.5 * (emb @ turn @ emb.T) / np.sqrt(h) + unigram[None, :])
        raw -= raw.max(axis=1, keepdims=True)
        self._logp: np.ndarray[Any, np.dtype[np.float64]] = raw - np.log(
            np.exp(raw).sum(axis=1, keepdims=True)
        )

    def score(self, ids: list[int]) -> tuple[float, int]:
        """The summed log-probability of ``ids[1:]`` given each one's predecessor, and how
        many tokens that is (the first has no predecessor: no BOS, as GPT-2)."""
        if len(ids) < 2:
            return 0.0, 0
        arr = np.asarray(ids, dtype=np.int64)
        return float(self._logp[arr[:-1], arr[1:]].sum()), len(ids) - 1
