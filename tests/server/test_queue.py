"""The queue in front of the backend: work whose client left is dropped, the queue is bounded
(503 + Retry-After), and a retrying client gets through (defect 7 of issue 8)."""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import anyio
import httpx
import numpy as np
import pytest

from bbt import Client
from bbt.protocol import ErrorEnvelope, ErrorType, Usage
from bbt.server import MockBackend, ServerSettings
from bbt.server._cancel import current_stop_check, raise_if_stopped
from bbt.server.app import create_app
from bbt.server.backend import FloatArray, IntArray

from .asgi import RawCall, uvicorn_server, wait_for, wait_for_sync
from .helpers import logits_body

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Gated(MockBackend):
    """Every backend call blocks until ``release`` is set, polling the app's stop check
    meanwhile (as the real backend does between forward chunks). ``calls`` counts the calls
    that started computing."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.release = threading.Event()
        self.calls = 0
        self._lock = threading.Lock()
        self._inside = threading.local()

    @contextmanager
    def _gated(self) -> Iterator[None]:
        if getattr(self._inside, "on", False):
            yield  # the mock's logits tokenises through self.tokenize: one call, one gate
            return
        self._inside.on = True
        try:
            with self._lock:
                self.calls += 1
            check = current_stop_check()
            while not self.release.wait(0.005):
                raise_if_stopped(check)
            yield
        finally:
            self._inside.on = False

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        with self._gated():
            return super().tokenize(texts, add_special_tokens)

    def embed(self, token_ids: IntArray) -> FloatArray:
        with self._gated():
            return super().embed(token_ids)

    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        with self._gated():
            return super().logits(prompts, texts, candidate_ids)


@asynccontextmanager
async def releasing(backend: Gated) -> AsyncIterator[None]:
    """Open the gate on the way out, inside the task group: a failing test must not hang."""
    try:
        yield
    finally:
        backend.release.set()


@contextmanager
def released_on_exit(backend: Gated) -> Iterator[None]:
    try:
        yield
    finally:
        backend.release.set()


def _payload(route: str, backend: MockBackend) -> dict[str, Any]:
    if route == "/v1/tokenize":
        return {"model": backend.info.id, "texts": ["a great movie"]}
    if route == "/v1/embeddings":
        return {"model": backend.info.id, "token_ids": [1, 2, 3]}
    return logits_body(backend.info)


ROUTES = ["/v1/logits", "/v1/tokenize", "/v1/embeddings"]


# ------------------------------------------------------------------ dropping abandoned work


@pytest.mark.parametrize("route", ROUTES)
async def test_queued_request_whose_client_left_never_computes(
    route: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = Gated()
    app = create_app(backend, ServerSettings(api_keys=[]))
    scheduler = app.state.scheduler
    first = RawCall(app, route, _payload(route, backend))
    queued = RawCall(app, route, _payload(route, backend))
    with caplog.at_level(logging.INFO, logger="bbt.server.access"):
        async with anyio.create_task_group() as tg, releasing(backend):
            tg.start_soon(first.run)
            await wait_for(lambda: backend.calls == 1)
            tg.start_soon(queued.run)
            await wait_for(lambda: scheduler.waiting == 1)
            queued.leave()
            await wait_for(lambda: queued.finished)
            backend.release.set()
    assert first.status == 200
    assert backend.calls == 1  # the abandoned request never reached the backend
    assert scheduler.stats.dropped_queued == 1
    assert scheduler.stats.completed == 1
    assert scheduler.admitted == 0
    statuses = [r.__dict__["status"] for r in caplog.records if r.name == "bbt.server.access"]
    assert sorted(statuses) == [200, 499]


async def test_running_logits_stop_when_their_client_leaves() -> None:
    backend = Gated()
    app = create_app(backend, ServerSettings(api_keys=[]))
    call = RawCall(app, "/v1/logits", logits_body(backend.info))
    async with anyio.create_task_group() as tg, releasing(backend):
        tg.start_soon(call.run)
        await wait_for(lambda: backend.calls == 1)
        call.leave()
        # Never released: only the stop check can end the call.
        await wait_for(lambda: call.finished)
    assert app.state.scheduler.stats.cancelled_running == 1
    assert app.state.scheduler.stats.completed == 0


class _Watched(MockBackend):
    """The mock, telling when its simulated compute has begun."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.computing = threading.Event()

    def _simulate_compute(self) -> None:
        self.computing.set()
        super()._simulate_compute()


async def test_mock_compute_stops_early_when_its_client_leaves() -> None:
    backend = _Watched(compute_ms=60_000)
    app = create_app(backend, ServerSettings(api_keys=[]))
    scheduler = app.state.scheduler
    call = RawCall(app, "/v1/logits", logits_body(backend.info))
    with anyio.fail_after(20):  # a minute of simulated compute must not run out
        async with anyio.create_task_group() as tg:
            tg.start_soon(call.run)
            await wait_for(backend.computing.is_set)
            call.leave()
            await wait_for(lambda: call.finished)
    assert scheduler.stats.cancelled_running == 1


async def test_a_finished_request_is_not_counted_as_dropped() -> None:
    backend = MockBackend()
    app = create_app(backend, ServerSettings(api_keys=[]))
    call = RawCall(app, "/v1/logits", logits_body(backend.info))
    await call.run()
    assert call.status == 200
    stats = app.state.scheduler.stats
    assert (stats.completed, stats.dropped_queued, stats.cancelled_running) == (1, 0, 0)


# ------------------------------------------------------------------ the queue bound


@pytest.mark.parametrize("max_queue", [0, 2])
async def test_full_queue_answers_503_with_retry_after(max_queue: int) -> None:
    backend = Gated()
    app = create_app(backend, ServerSettings(api_keys=[], max_queue=max_queue))
    scheduler = app.state.scheduler
    body = logits_body(backend.info)
    admitted = [RawCall(app, "/v1/logits", body) for _ in range(1 + max_queue)]
    refused = RawCall(app, "/v1/logits", body)
    async with anyio.create_task_group() as tg, releasing(backend):
        for call in admitted:
            tg.start_soon(call.run)
        await wait_for(lambda: scheduler.admitted == 1 + max_queue)
        await refused.run()  # answered at once, while the others still wait
        assert all(not c.finished for c in admitted)
        backend.release.set()
    assert refused.status == 503
    env = ErrorEnvelope.model_validate_json(refused.response)
    assert env.error.type == ErrorType.unavailable
    assert "busy" in env.error.message
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-bbt-protocol"] == "1"
    assert [c.status for c in admitted] == [200] * (1 + max_queue)
    assert scheduler.stats.rejected_queue_full == 1
    assert backend.calls == 1 + max_queue


async def test_queue_frees_its_slots_after_errors() -> None:
    """A request that fails (422 from the backend) must give its queue slot back."""
    backend = MockBackend(max_sequence_length=8)
    app = create_app(backend, ServerSettings(api_keys=[], max_queue=0))
    bad = logits_body(backend.info, texts=[" ".join(["w"] * 20) + " [MASK]"])
    for _ in range(3):
        call = RawCall(app, "/v1/logits", bad)
        await call.run()
        assert call.status == 422
    assert app.state.scheduler.admitted == 0
    assert app.state.scheduler.stats.rejected_queue_full == 0


def test_retry_after_follows_the_mean_call_time() -> None:
    app = create_app(MockBackend(), ServerSettings(api_keys=[]))
    scheduler = app.state.scheduler
    assert scheduler.retry_after_s() == 1  # nothing measured yet: one second
    for _ in range(50):
        scheduler._record(10.0)
    scheduler.admitted = 4  # 1 running (not borrowed here: all four count as waiting)
    values = {scheduler.retry_after_s() for _ in range(200)}
    # 10 s per call x 4 waiting, times a jitter factor in [0.5, 1]: within [20, 40].
    assert min(values) >= 20
    assert max(values) <= 40
    assert len(values) > 1
    for _ in range(50):
        scheduler._record(1000.0)
    assert scheduler.retry_after_s() == 60  # capped


# ------------------------------------------------------------------ over real sockets


def test_client_timeouts_free_the_server_over_uvicorn() -> None:
    """Real disconnects: clients whose httpx timeout fires close their sockets; uvicorn
    reports it, the queued request is dropped and the running one stops, and the next
    request is served at once."""
    backend = Gated()
    settings = ServerSettings(api_keys=[])
    app = create_app(backend, settings)
    scheduler = app.state.scheduler
    body = logits_body(backend.info)
    outcomes: dict[str, str] = {}

    def post(name: str, timeout: float) -> None:
        try:
            r = httpx.post(f"{url}/v1/logits", json=body, timeout=timeout)
            outcomes[name] = str(r.status_code)
        except httpx.TimeoutException:
            outcomes[name] = "timeout"

    # Release the gate first on the way out: a failing test must not hang on it.
    with uvicorn_server(app, settings) as url, released_on_exit(backend):
        slow = threading.Thread(target=post, args=("running", 1.5))
        slow.start()
        wait_for_sync(lambda: backend.calls == 1)
        queued = threading.Thread(target=post, args=("queued", 0.3))
        queued.start()
        wait_for_sync(lambda: scheduler.stats.dropped_queued == 1)
        wait_for_sync(lambda: scheduler.stats.cancelled_running == 1)
        backend.release.set()
        r = httpx.post(f"{url}/v1/logits", json=body, timeout=10)
        slow.join()
        queued.join()
    assert r.status_code == 200
    assert outcomes == {"running": "timeout", "queued": "timeout"}
    assert backend.calls == 2  # the first and the last; never the abandoned queued one
    assert scheduler.stats.completed == 1


def test_retrying_client_gets_through_a_full_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BBT_API_KEY", "BBT_BASE_URL", "BBT_MODEL", "BBT_TIMEOUT", "BBT_MAX_RETRIES"):
        monkeypatch.delenv(name, raising=False)
    backend = MockBackend(compute_ms=800)
    settings = ServerSettings(api_keys=[], max_queue=0)
    app = create_app(backend, settings)
    scheduler = app.state.scheduler
    body = logits_body(backend.info)
    with uvicorn_server(app, settings) as url:
        busy = threading.Thread(
            target=httpx.post, args=(f"{url}/v1/logits",), kwargs={"json": body, "timeout": 30}
        )
        busy.start()
        wait_for_sync(lambda: scheduler.limiter.borrowed_tokens == 1)
        waits: list[float] = []
        with Client(url, env_file=None, max_retries=5, timeout=30) as client:

            def sleep(seconds: float) -> None:
                waits.append(seconds)
                threading.Event().wait(seconds)

            client._sleep = sleep
            prompts = np.zeros((1, 2, backend.info.hidden_size), np.float32)
            out = client.logits(prompts, ["good [MASK] ."], [5, 6])
        busy.join()
    assert out.shape == (1, 1, 2)
    assert scheduler.stats.rejected_queue_full >= 1
    # It waited as told by Retry-After (whole seconds), not its own short backoff.
    assert waits
    assert all(w >= 1 and w == int(w) for w in waits)
