"""Fan-out (issue 13): one logits call split into concurrent requests, reassembled in order."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from bbt.client import AsyncClient, Client, ClientSettings
from bbt.client._base import plan_logits
from bbt.client._fanout import run_ordered
from bbt.errors import BadRequestError
from bbt.server.mock import MOCK_MASK_TOKEN, MOCK_TEMPLATE, MockBackend, sample_mock_dataset
from bbt.testing import MOCK_BASE_URL, CoreTransport
from bbt.tuner import Example, TuneConfig, get_preset, resume, sample_k_shot, tune
from bbt.tuner.run import HISTORY

H = 32


def _texts(n: int) -> list[str]:
    pairs = sample_mock_dataset(n, 1)
    return [MOCK_TEMPLATE.format(text=t, mask=MOCK_MASK_TOKEN) for t, _ in pairs]


def _prompts(p: int, backend: MockBackend) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(7)
    return (rng.standard_normal((p, 4, H)) * backend.info.embedding_std).astype(np.float32)


class _Recording(httpx.BaseTransport):
    """Serves the mock; records logits bodies and the most requests it saw in flight at once."""

    def __init__(self, backend: MockBackend, hold_s: float = 0.0, fail_first: int = 0) -> None:
        self.inner = CoreTransport(backend)
        self.hold = threading.Barrier(2) if hold_s else None
        self.hold_s = hold_s
        self.fail_first = fail_first
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.logits_bodies: list[dict[str, Any]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path != "/v1/logits":
            return self.inner.handle_request(request)
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.logits_bodies.append(json.loads(request.read()))
            fail = self.fail_first > 0
            self.fail_first -= 1
        try:
            if self.hold is not None:
                # Two requests must meet here: proof they were in flight together.
                self.hold.wait(timeout=self.hold_s)
            if fail:
                return httpx.Response(503, json={"error": {"type": "unavailable", "message": "x"}})
            return self.inner.handle_request(request)
        finally:
            with self.lock:
                self.in_flight -= 1


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BBT_MAX_CONCURRENCY", "BBT_BASE_URL", "BBT_API_KEY", "BBT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BBT_HOME", str(tmp_path / "bbt-home"))
    monkeypatch.chdir(tmp_path)


def test_settings_default_is_one_and_the_env_sets_it(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ClientSettings(env_file=None).max_concurrency == 1
    monkeypatch.setenv("BBT_MAX_CONCURRENCY", "4")
    assert ClientSettings(env_file=None).max_concurrency == 4
    with pytest.raises(ValueError, match="greater than or equal to 1"):
        ClientSettings(env_file=None, max_concurrency=0)


def test_plan_splits_prompts_into_at_least_the_requested_chunks() -> None:
    backend = MockBackend(hidden_size=H)
    prompts, texts = _prompts(10, backend), _texts(6)
    chunks = plan_logits(backend.info, prompts, texts, [5, 6], min_requests=4)
    assert len(chunks) == 4
    assert [(c.p0, c.p1) for c in chunks] == [(0, 3), (3, 6), (6, 8), (8, 10)]
    assert all((c.b0, c.b1) == (0, 6) for c in chunks)  # texts are never split for fan-out
    # More chunks than prompts is impossible: one prompt each at most.
    assert len(plan_logits(backend.info, prompts[:2], texts, [5], min_requests=8)) == 2


def test_sync_fan_out_is_concurrent_bitwise_and_counts_exactly(clean_env: None) -> None:
    backend = MockBackend(hidden_size=H)
    prompts, texts, cands = _prompts(8, backend), _texts(5), [5, 6, 7]
    with Client(MOCK_BASE_URL, transport=CoreTransport(backend), env_file=None) as one:
        ref = one.logits(prompts, texts, cands)
    wire = _Recording(backend, hold_s=10.0)
    with Client(MOCK_BASE_URL, transport=wire, env_file=None, max_concurrency=4) as many:
        out = many.logits(prompts, texts, cands)
    assert out.tobytes() == ref.tobytes()
    assert wire.peak >= 2
    assert len(wire.logits_bodies) == 4
    assert [b["prompts"]["shape"][0] for b in wire.logits_bodies] == [2, 2, 2, 2]
    assert many.usage.calls == one.usage.calls == 8
    assert many.usage.sequences == one.usage.sequences == 8 * 5
    assert many.usage.tokens == one.usage.tokens
    assert many.usage.requests == one.usage.requests + 3  # models + 4 logits vs models + 1


def test_a_retried_chunk_keeps_the_result_and_the_usage_exact(clean_env: None) -> None:
    backend = MockBackend(hidden_size=H)
    prompts, texts, cands = _prompts(6, backend), _texts(4), [5, 6]
    wire = _Recording(backend, fail_first=1)
    client = Client(MOCK_BASE_URL, transport=wire, env_file=None, max_concurrency=3)
    client._sleep = lambda _s: None
    with client:
        out = client.logits(prompts, texts, cands)
        ref, _ = backend.logits(prompts, texts, np.array(cands))
    assert out.tobytes() == ref.tobytes()
    assert client.usage.retries == 1
    assert client.usage.requests == 1 + 3 + 1  # models, 3 chunks, 1 retry
    assert client.usage.sequences == 6 * 4  # the failed attempt computed nothing


def test_the_first_failing_chunk_is_raised_after_the_others_finish() -> None:
    done: list[int] = []

    def ok(i: int) -> Any:
        def job() -> int:
            done.append(i)
            return i

        return job

    def bad() -> int:
        raise BadRequestError("chunk 1 refused", status_code=422)

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert run_ordered(pool, [ok(0), ok(1), ok(2)]) == [0, 1, 2]
        with pytest.raises(BadRequestError, match="chunk 1"):
            run_ordered(pool, [ok(10), bad, ok(12)])
    assert 10 in done


@pytest.mark.anyio
async def test_async_fan_out_from_the_environment(
    clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bbt.testing import AsyncCoreTransport

    backend = MockBackend(hidden_size=H)
    prompts, texts, cands = _prompts(9, backend), _texts(3), [5, 6]
    ref, _ = backend.logits(prompts, texts, np.array(cands))
    seen: list[int] = []
    inner = AsyncCoreTransport(backend)

    async def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/logits":
            seen.append(json.loads(request.content)["prompts"]["shape"][0])
        return await inner.handle_async_request(request)

    monkeypatch.setenv("BBT_MAX_CONCURRENCY", "3")
    async with AsyncClient(
        MOCK_BASE_URL, transport=httpx.MockTransport(handler), env_file=None
    ) as client:
        out = await client.logits(prompts, texts, cands)
    assert out.tobytes() == ref.tobytes()
    assert seen == [3, 3, 3]
    assert client.usage.sequences == 27


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _client(backend: MockBackend, width: int) -> Client:
    return Client(
        MOCK_BASE_URL, transport=CoreTransport(backend), env_file=None, max_concurrency=width
    )


def test_resume_is_bitwise_identical_whatever_the_fan_out(clean_env: None, tmp_path: Path) -> None:
    examples = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    train, dev = sample_k_shot(examples, 16, 1, 2)
    task = get_preset("mock")
    cfg = TuneConfig(n_tokens=5, dim=20, popsize=8, budget=96, eval_every=32, seed=3)
    with _client(MockBackend(hidden_size=H), 1) as svc:
        full = tune(svc, task, train, dev, cfg, run_dir=tmp_path / "a")

    def stop_after(rec: Any) -> None:
        if rec.generation >= 4:
            raise KeyboardInterrupt

    run = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt), _client(MockBackend(hidden_size=H), 3) as svc:
        tune(svc, task, train, dev, cfg, run_dir=run, callbacks=[stop_after])
    with _client(MockBackend(hidden_size=H), 4) as svc:
        res = resume(run, svc)
        assert svc.usage.requests > svc.usage.calls / 8  # it did fan out: > 1 request a gen
    assert res.z.tobytes() == full.z.tobytes()
    assert res.metrics == full.metrics

    def rows(path: Path) -> list[dict[str, Any]]:
        lines = (path / HISTORY).read_text().splitlines()
        return [{k: v for k, v in json.loads(x).items() if k != "wall_time"} for x in lines]

    assert rows(run) == rows(tmp_path / "a")
