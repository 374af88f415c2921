"""Fan-out: the requests of one call sent concurrently, their answers kept in call order.

``ClientSettings.max_concurrency`` (``BBT_MAX_CONCURRENCY``) sets how many requests one
call keeps in flight. A logits call is then split into at least that many chunks of the
population (:func:`bbt.client._base.plan_logits`'s ``min_requests``), so one tuner keeps
several server replicas busy. Each chunk is still sent by the client's ordinary
per-request function, with its own retries; answers are reassembled in chunk order, so
the result is the same array whatever the fan-out (the protocol makes row ``[i, j]``
depend only on prompt i and text j).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def run_ordered(pool: ThreadPoolExecutor | None, jobs: Sequence[Callable[[], T]]) -> list[T]:
    """Run ``jobs`` on ``pool`` (inline when None or only one job); results in job order.

    On the first failure (in job order) the jobs not yet started are cancelled, the ones
    running are waited for (a thread cannot be stopped, and its usage counts must land
    before the caller reads them), and that failure is raised.
    """
    if pool is None or len(jobs) <= 1:
        return [job() for job in jobs]
    futures: list[Future[T]] = [pool.submit(job) for job in jobs]
    try:
        return [f.result() for f in futures]
    except BaseException:
        for f in futures:
            f.cancel()
        for f in futures:
            if not f.cancelled():
                f.exception()  # waits; the first error is already on its way up
        raise


async def gather_ordered(width: int, jobs: Sequence[Awaitable[T]]) -> list[T]:
    """Await ``jobs`` at most ``width`` at a time; results in job order.

    On the first failure the remaining jobs are cancelled and that error is raised.
    """
    gate = asyncio.Semaphore(width)

    async def run(job: Awaitable[T]) -> T:
        async with gate:
            return await job

    tasks = [asyncio.ensure_future(run(job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
