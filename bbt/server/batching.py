"""Cross-request batching: concurrent logits calls merged into shared forward passes.

A replica that serves many tuning jobs gets many small logits requests at once. Run one
after the other, each pays a whole forward pass; on a GPU a pass over twice the sequences
costs little more than one. :class:`BatchingBackend` wraps any :class:`Backend`: the app's
worker threads hand it their calls, one dispatcher thread takes every call waiting when
the model comes free (up to ``token_budget`` padded tokens; a call larger than the budget
runs alone) and runs them as one merged batch, then hands each caller its own answer.

It is the same idea as Ray Serve's ``@serve.batch``, done in the replica's threads so that
it sits under :func:`~bbt.server.app.create_app` unchanged (the app calls backends in
worker threads) and works, and is tested, without Ray. No wait is added for a lone call:
batches form from the calls that queued while the previous batch computed, so an idle
replica answers as fast as an unwrapped one.

A result never depends on what it was batched with. How a merged batch is computed:

* :class:`~bbt.server.mock.MockBackend`: one simulated forward pass (``compute_ms``) for
  the whole batch, then each call's own arithmetic: bitwise the answer it gets alone.
* :class:`~bbt.server.hf.HFBackend`: the sequences of all calls with the same prompt length
  and candidates share forward chunks (text-major, longest first, as a lone call does).
  Rows are independent in the encoder, so only padding changes: equal within the compute
  dtype's rounding, which is the protocol's promise for any split of the work.
* any other backend: the calls run one after the other (correct, no gain).
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bbt.protocol import ModelInfo, Usage
from bbt.server._cancel import current_stop_check, raise_if_stopped
from bbt.server.backend import Backend, FloatArray, IntArray
from bbt.server.mock import COMPUTE_SLICE_S, MockBackend

logger = logging.getLogger("bbt.server.batching")

#: Padded tokens one merged batch may hold unless told otherwise (the HF backend's CPU
#: default for one forward chunk; a merged batch is still cut into chunks of that size).
DEFAULT_TOKEN_BUDGET = 4096
#: How often a queued caller looks at its client's stop check, in seconds.
_POLL_S = 0.01

Result = tuple[FloatArray, Usage]


@dataclass
class LogitsJob:
    """One logits call waiting for (or in) a merged batch."""

    prompts: FloatArray
    texts: list[str]
    candidate_ids: IntArray
    tokens: int
    done: threading.Event = field(default_factory=threading.Event)
    result: Result | None = None
    error: BaseException | None = None
    started: bool = False
    dropped: bool = False


@dataclass
class BatchStats:
    """Counters of the batcher (``BatchingBackend.stats``)."""

    #: Merged batches run (a lone call counts as a batch of one).
    batches: int = 0
    #: Calls answered.
    calls: int = 0
    #: The most calls one batch held.
    largest: int = 0
    #: Calls whose client left before their batch started (they never computed).
    dropped: int = 0


def merged_logits(backend: Backend, jobs: list[LogitsJob]) -> list[Result]:
    """Answer every job as one merged batch on ``backend`` (see the module docstring)."""
    if isinstance(backend, MockBackend):
        return _mock_merged(backend, jobs)
    try:
        from bbt.server.hf import HFBackend
    except ImportError:  # no torch: it cannot be an HF backend either
        HFBackend = None  # type: ignore[assignment, misc]  # noqa: N806
    if HFBackend is not None and isinstance(backend, HFBackend):
        from bbt.server._hf_batch import hf_merged

        return hf_merged(backend, [(j.prompts, j.texts, j.candidate_ids) for j in jobs])
    return [backend.logits(j.prompts, j.texts, j.candidate_ids) for j in jobs]


def _mock_merged(backend: MockBackend, jobs: list[LogitsJob]) -> list[Result]:
    # The simulated forward pass is paid once for the batch; the arithmetic is each job's
    # own, on a view of the same weights with no simulated latency.
    if backend.compute_ms > 0:
        deadline = time.perf_counter() + backend.compute_ms / 1000.0
        while (left := deadline - time.perf_counter()) > 0:
            time.sleep(min(COMPUTE_SLICE_S, left))
    fast = copy.copy(backend)
    fast.compute_ms = 0.0
    return [fast.logits(j.prompts, j.texts, j.candidate_ids) for j in jobs]


class BatchingBackend(Backend):
    """``inner`` behind a batcher that merges concurrent :meth:`logits` calls.

    Args:
        inner: the backend that computes.
        token_budget: most padded tokens (prompt + text, per sequence) in one merged batch.
        max_batch: most calls in one merged batch.
        max_wait_ms: how long the dispatcher waits for more calls after the first one of a
            batch (0: never; batches still form from calls queued during the last batch).

    Tokenize and embeddings calls go straight to ``inner``. Serve it with an app whose
    ``max_concurrency`` is above 1, or concurrent calls never meet here.
    """

    def __init__(
        self,
        inner: Backend,
        token_budget: int = DEFAULT_TOKEN_BUDGET,
        *,
        max_batch: int = 64,
        max_wait_ms: float = 0.0,
        merge: Callable[[Backend, list[LogitsJob]], list[Result]] = merged_logits,
    ) -> None:
        if token_budget < 1 or max_batch < 1 or max_wait_ms < 0:
            raise ValueError("token_budget and max_batch must be positive, max_wait_ms >= 0")
        self.inner = inner
        self.token_budget = token_budget
        self.max_batch = max_batch
        self.max_wait_s = max_wait_ms / 1000.0
        self.stats = BatchStats()
        self._merge = merge
        self._queue: deque[LogitsJob] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="bbt-batcher", daemon=True)
        self._thread.start()

    @property
    def info(self) -> ModelInfo:
        return self.inner.info

    def __getattr__(self, name: str) -> Any:
        # Anything else (optional features, diagnostics such as ``token_budget``) is the
        # inner backend's: the wrapper only changes how logits calls meet the model.
        if name == "inner":  # not set yet (during __init__): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        return self.inner.tokenize(texts, add_special_tokens)

    def embed(self, token_ids: IntArray) -> FloatArray:
        return self.inner.embed(token_ids)

    def _tokens(self, prompts: FloatArray, texts: list[str]) -> int:
        """Padded-token cost of a call: every prompt on every text, with 2 special tokens."""
        ids, _ = self.inner.tokenize(texts)
        n = int(prompts.shape[1]) if prompts.ndim == 3 else 0
        return int(prompts.shape[0]) * sum(len(t) + n + 2 for t in ids)

    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        job = LogitsJob(prompts, list(texts), candidate_ids, self._tokens(prompts, texts))
        stop = current_stop_check()
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append(job)
            self._cond.notify_all()
        while not job.done.wait(_POLL_S):
            if stop is not None and stop():
                with self._cond:
                    if not job.started:
                        # Still queued: leave the queue, never compute.
                        job.dropped = True
                        self._queue.remove(job)
                        self.stats.dropped += 1
                        raise_if_stopped(stop, "logits")
                # Already in a batch with others: its answer is simply not read.
        if job.error is not None:
            raise job.error
        assert job.result is not None
        return job.result

    def _take(self) -> list[LogitsJob] | None:
        """The next batch: the oldest waiting call plus what fits after it (FIFO)."""
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            if self.max_wait_s > 0:
                deadline = time.monotonic() + self.max_wait_s
                while len(self._queue) < self.max_batch:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            batch = [self._queue.popleft()]
            used = batch[0].tokens
            # FIFO: stop at the first call that does not fit, so none is overtaken forever.
            while (
                self._queue
                and len(batch) < self.max_batch
                and used + self._queue[0].tokens <= self.token_budget
            ):
                job = self._queue.popleft()
                used += job.tokens
                batch.append(job)
            for job in batch:
                job.started = True
            return batch

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            try:
                results = self._merge(self.inner, batch)
            except BaseException as exc:  # handed to every caller of the batch
                if len(batch) > 1:
                    # One bad call must not fail its neighbours: retry them one by one.
                    logger.info("merged batch of %d failed (%s); running alone", len(batch), exc)
                    self._run_alone(batch)
                else:
                    batch[0].error = exc
                    batch[0].done.set()
                continue
            self.stats.batches += 1
            self.stats.calls += len(batch)
            self.stats.largest = max(self.stats.largest, len(batch))
            for job, res in zip(batch, results, strict=True):
                job.result = res
                job.done.set()

    def _run_alone(self, batch: list[LogitsJob]) -> None:
        for job in batch:
            try:
                job.result = self._merge(self.inner, [job])[0]
                self.stats.batches += 1
                self.stats.calls += 1
            except BaseException as exc:
                job.error = exc
            job.done.set()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            job.error = RuntimeError("the batcher closed before this call ran")
            job.done.set()
        self._thread.join(timeout=5)
        self.inner.close()


__all__ = ["DEFAULT_TOKEN_BUDGET", "BatchStats", "BatchingBackend", "LogitsJob", "merged_logits"]
