"""The comparison's shared pieces: usage of a phase from the service's counters, and a
predictor that answers no rows without asking anything."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bbt.client import UsageStats
from bbt.comparison.base import Classifier, IntArray, Usage
from bbt.tuner.data import Example


def test_usage_of_a_phase_is_its_counters_and_its_time() -> None:
    delta = UsageStats(calls=3, requests=5, tokens=700, bytes_sent=11, bytes_received=13)
    assert Usage.spent(delta, 1.5) == Usage(
        calls=3,
        requests=5,
        input_tokens=700,
        output_tokens=0,
        bytes_sent=11,
        bytes_received=13,
        seconds=1.5,
    )


class _Counting(Classifier):
    def __init__(self) -> None:
        self.batches: list[int] = []

    def predict_rows(self, examples: Sequence[Example]) -> IntArray:
        self.batches.append(len(examples))
        return np.ones(len(examples), dtype=np.int64)


def test_no_rows_get_no_predictions_and_no_call() -> None:
    clf = _Counting()
    empty = clf.predict([])
    assert empty.shape == (0,)
    assert empty.dtype == np.int64
    assert clf.batches == []
    assert clf.predict([Example({"text": "a"}, 0), Example({"text": "b"}, 1)]).tolist() == [1, 1]
    assert clf.batches == [2]
