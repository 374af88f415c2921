"""The bounded queue in front of the backend, and what it knows of each request's client.

Work whose client has gone is dropped: the app's guard watches each request's ``receive``
channel for ``http.disconnect`` while the app runs and marks the request's
:class:`ClientLink`. A request still waiting for the backend is taken out of the queue and
never computes; a backend call already running gets a stop check
(:mod:`bbt.server._cancel`) that the Hugging Face backend polls between forward chunks.
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from bbt.protocol import ErrorType
from bbt.server._cancel import Cancelled, stop_when
from bbt.server._failures import APIFailure

logger = logging.getLogger("bbt.server")

T = TypeVar("T")
Message = MutableMapping[str, Any]

#: Bounds of the Retry-After sent with a queue-full 503, in seconds.
MIN_RETRY_AFTER_S = 1
MAX_RETRY_AFTER_S = 60


class ClientGone(Exception):  # noqa: N818 - an outcome, not a crash
    """The request's client disconnected; its work was dropped and nothing is answered."""


class ClientLink:
    """Whether one request's client is still connected, seen from the event loop and threads.

    The guard calls :meth:`mark_gone` when the server's ``receive`` yields
    ``http.disconnect``; that cancels every scope opened with :meth:`cancel_scope` (a request
    waiting for the backend leaves the queue) and sets :attr:`stop` (a running backend call
    polls it through :func:`bbt.server._cancel.stop_when`).
    """

    def __init__(self) -> None:
        self.gone = anyio.Event()
        self.stop = threading.Event()
        self._scopes: set[anyio.CancelScope] = set()

    def mark_gone(self) -> None:
        self.stop.set()
        self.gone.set()
        for scope in list(self._scopes):
            scope.cancel()

    @contextmanager
    def cancel_scope(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that is cancelled (at once, if already gone) on disconnect."""
        with anyio.CancelScope() as scope:
            if self.stop.is_set():
                scope.cancel()
            self._scopes.add(scope)
            try:
                yield scope
            finally:
                self._scopes.discard(scope)

    def receive_after(self, body: bytes) -> Callable[[], Any]:
        """The app's receive: the already-read body once, then ``http.disconnect`` when gone.

        The guard's watcher is the only reader of the server's own ``receive``: two readers
        would steal each other's messages.
        """
        sent = False

        async def receive() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            await self.gone.wait()
            return {"type": "http.disconnect"}

        return receive


@dataclass
class SchedulerStats:
    """Counters of the queue in front of the backend (``app.state.scheduler.stats``)."""

    #: Backend calls that ran to the end.
    completed: int = 0
    #: Requests refused with 503 because the queue was full.
    rejected_queue_full: int = 0
    #: Requests whose client left while they waited: they never computed.
    dropped_queued: int = 0
    #: Backend calls stopped part-way (between forward chunks) because their client left.
    cancelled_running: int = 0
    #: Backend calls that finished after their client had left (answer discarded).
    finished_for_nobody: int = 0


class Scheduler:
    """Admits at most ``max_concurrency + max_queue`` requests; runs them FIFO in threads.

    Not thread-safe on purpose: admission happens on the event loop only.
    """

    def __init__(self, max_concurrency: int, max_queue: int, rng: random.Random | None = None):
        # FIFO-fair: anyio's limiter wakes waiters in arrival order. Backend calls run in
        # worker threads, so the event loop keeps accepting and answering meanwhile.
        self.limiter = anyio.CapacityLimiter(max_concurrency)
        self.max_concurrency = max_concurrency
        self.max_queue = max_queue
        self.admitted = 0
        self.stats = SchedulerStats()
        self._mean_call_s: float | None = None
        self._rng = rng or random.Random()

    @property
    def waiting(self) -> int:
        """Admitted requests not yet running."""
        return max(0, self.admitted - self.limiter.borrowed_tokens)

    def retry_after_s(self) -> int:
        """Seconds until the queue has drained, by the mean backend call time, with jitter.

        Jitter (a uniform factor in [0.5, 1]) spreads the clients refused together, so they
        do not all come back in the same second and meet a full queue again.
        """
        mean = self._mean_call_s if self._mean_call_s is not None else 1.0
        drain = mean * max(1, self.waiting) / self.max_concurrency
        wait = math.ceil(drain * self._rng.uniform(0.5, 1.0))
        return min(MAX_RETRY_AFTER_S, max(MIN_RETRY_AFTER_S, wait))

    def _record(self, seconds: float) -> None:
        # Exponentially weighted: follows a change of request sizes within a few calls.
        prev = self._mean_call_s
        self._mean_call_s = seconds if prev is None else 0.8 * prev + 0.2 * seconds

    async def run(self, fn: Callable[[Any], T], arg: Any, link: ClientLink | None) -> T:
        if self.admitted >= self.max_concurrency + self.max_queue:
            self.stats.rejected_queue_full += 1
            retry = self.retry_after_s()
            logger.warning(
                "queue full (%d running, %d waiting): answering 503, Retry-After %ds",
                self.limiter.borrowed_tokens,
                self.waiting,
                retry,
            )
            raise APIFailure(
                503,
                ErrorType.unavailable,
                f"server busy: {self.waiting} requests are already waiting for the model; "
                f"retry after {retry}s",
                headers={"Retry-After": str(retry)},
            )
        self.admitted += 1
        try:
            return await self._run(fn, arg, link)
        finally:
            self.admitted -= 1

    async def _run(self, fn: Callable[[Any], T], arg: Any, link: ClientLink | None) -> T:
        stop = link.stop if link is not None else None
        started = False
        timing = [0.0]

        def work(a: Any) -> T:
            nonlocal started
            # The disconnect may land between the limiter's grant and this thread starting.
            if stop is not None and stop.is_set():
                raise ClientGone
            started = True
            t0 = time.perf_counter()
            try:
                with stop_when(stop.is_set if stop is not None else None):
                    return fn(a)
            finally:
                timing[0] = time.perf_counter() - t0

        result: T | None = None
        with link.cancel_scope() if link is not None else anyio.CancelScope() as scope:
            try:
                result = await anyio.to_thread.run_sync(work, arg, limiter=self.limiter)
            except ClientGone:
                pass  # counted below: it never started
            except Cancelled:
                self.stats.cancelled_running += 1
                self._record(timing[0])
                logger.info("client gone: stopped its backend call part-way")
                raise ClientGone from None
        if not started:
            # Cancelled while waiting for the limiter, or refused at the thread's door.
            self.stats.dropped_queued += 1
            logger.info("client gone: dropped its queued request before it computed")
            raise ClientGone
        self._record(timing[0])
        if scope.cancel_called:
            self.stats.finished_for_nobody += 1
            raise ClientGone
        self.stats.completed += 1
        return result  # type: ignore[return-value]  # set whenever the call started and ended
