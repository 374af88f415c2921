"""Timeouts: a short connect, a read that grows with the work a logits request carries.

The defect: one 60 s timeout for everything. A large logits request that the server needs
longer than that to compute timed out, was retried, queued behind the abandoned attempt
still computing, timed out again: a slow server could never succeed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from bbt.client import AsyncClient, Client, ClientSettings
from bbt.client._config import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT_PER_SEQUENCE
from bbt.errors import APITimeoutError
from bbt.protocol import Usage
from bbt.server.backend import FloatArray, IntArray
from bbt.server.mock import MockBackend
from bbt.testing import live_server

from .fakes import FakeService, tagged_prompts, texts

MakeClient = Callable[..., Client]
MakeAsync = Callable[..., AsyncClient]


def _sent_timeout(request: httpx.Request) -> dict[str, float]:
    """The timeout httpx applied to this request (its per-request "timeout" extension)."""
    timeout: dict[str, float] = request.extensions["timeout"]
    return timeout


def _sequences(request: httpx.Request) -> int:
    body: dict[str, Any] = json.loads(request.content)
    return int(body["prompts"]["shape"][0]) * len(body["texts"])


def _check_every_request(
    requests: list[httpx.Request], *, read: float, connect: float, per_sequence: float
) -> list[int]:
    """Assert each request's timeout; return the sequence counts of the logits requests."""
    counts = []
    for request in requests:
        sent = _sent_timeout(request)
        sequences = _sequences(request) if request.url.path == "/v1/logits" else 0
        assert sent == {
            "connect": connect,
            "read": pytest.approx(read + sequences * per_sequence),
            "write": read,
            "pool": read,
        }, request.url.path
        if sequences:
            counts.append(sequences)
    return counts


def test_each_logits_request_reads_for_as_long_as_its_size_needs(
    make_client: MakeClient, service: FakeService
) -> None:
    # 7 prompts x 6 texts over the fake's limits (3 prompts, 4 texts, 8 sequences a request):
    # chunks of different sizes, each of which must get its own allowance.
    client = make_client(timeout=30, timeout_per_sequence=0.5)
    client.logits(tagged_prompts(7), texts(6), [5, 6])
    counts = _check_every_request(service.requests, read=30, connect=10, per_sequence=0.5)
    assert sum(counts) == 7 * 6
    assert len(set(counts)) > 1  # the chunks differ in size, and so do their timeouts
    assert client.usage.sequences == 7 * 6  # accounting untouched


@pytest.mark.anyio
async def test_the_async_client_sends_the_same_timeouts(
    make_async_client: MakeAsync, service: FakeService
) -> None:
    async with make_async_client(timeout=30, timeout_per_sequence=0.5) as client:
        await client.logits(tagged_prompts(7), texts(6), [5, 6])
    counts = _check_every_request(service.requests, read=30, connect=10, per_sequence=0.5)
    assert sum(counts) == 7 * 6


def test_a_retry_gets_the_same_allowance(make_client: MakeClient, service: FakeService) -> None:
    client = make_client(timeout=20, connect_timeout=3, timeout_per_sequence=1.0)
    client.model_info()
    service.faults.append(httpx.ReadTimeout("the server is still computing"))
    client.logits(tagged_prompts(2), texts(3), [5])
    logits = [r for r in service.requests if r.url.path == "/v1/logits"]
    assert len(logits) == 2  # the timed-out attempt and its retry
    assert [_sent_timeout(r) for r in logits] == [
        {"connect": 3.0, "read": 26.0, "write": 20.0, "pool": 20.0}
    ] * 2


def test_other_requests_and_the_client_default_use_the_base_timeout(
    make_client: MakeClient, service: FakeService
) -> None:
    client = make_client(timeout=45)
    client.tokenize(["a b"])
    client.embed([1, 2])
    assert [r.url.path for r in service.requests] == [
        "/v1/models",
        "/v1/tokenize",
        "/v1/embeddings",
    ]
    expected = {"connect": DEFAULT_CONNECT_TIMEOUT, "read": 45.0, "write": 45.0, "pool": 45.0}
    assert all(_sent_timeout(r) == expected for r in service.requests)
    assert client._http.timeout.as_dict() == expected


@pytest.mark.usefixtures("no_env")
def test_timeout_settings_come_from_the_environment_and_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / ".env").write_text("BBT_CONNECT_TIMEOUT=4\nBBT_TIMEOUT_PER_SEQUENCE=0.125\n")
    s = ClientSettings()
    assert (s.connect_timeout, s.timeout_per_sequence) == (4.0, 0.125)
    monkeypatch.setenv("BBT_TIMEOUT_PER_SEQUENCE", "0")  # 0: a fixed read timeout
    monkeypatch.setenv("BBT_TIMEOUT", "90")
    assert ClientSettings().http_timeout(640).as_dict() == {
        "connect": 4.0,
        "read": 90.0,
        "write": 90.0,
        "pool": 90.0,
    }


@pytest.mark.usefixtures("no_env")
def test_connect_timeout_defaults() -> None:
    s = ClientSettings(env_file=None)
    assert s.http_timeout().connect == DEFAULT_CONNECT_TIMEOUT
    # A paper-scale request (P=20 x B=32) with the defaults.
    assert s.http_timeout(640).read == pytest.approx(60 + 640 * DEFAULT_TIMEOUT_PER_SEQUENCE)
    # An unset connect timeout never outlasts a shorter read timeout (timeout=2 keeps
    # meaning "nothing waits more than 2 s" before the first byte); an explicit one is kept.
    assert ClientSettings(env_file=None, timeout=2).http_timeout().connect == 2.0
    assert ClientSettings(env_file=None, timeout=2, connect_timeout=5).http_timeout().connect == 5


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize(
    ("name", "value"), [("BBT_CONNECT_TIMEOUT", "0"), ("BBT_TIMEOUT_PER_SEQUENCE", "-1")]
)
def test_invalid_timeouts_fail_fast(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        ClientSettings(env_file=None)


class _SlowLogits(MockBackend):
    """The mock model, with logits that take ``delay`` seconds: a busy server."""

    def __init__(self, delay: float) -> None:
        super().__init__(hidden_size=8)
        self.delay = delay

    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        time.sleep(self.delay)
        return super().logits(prompts, texts, candidate_ids)


@pytest.mark.usefixtures("no_env")
def test_over_a_real_socket_the_scaled_read_timeout_is_what_httpx_applies() -> None:
    # The server needs 0.5 s for 2 sequences; a flat 0.25 s read timeout can never see the
    # answer, the same base plus 1 s per sequence (2.25 s) does, with room for a busy CPU.
    with live_server(_SlowLogits(delay=0.5)) as server:
        prompts = np.zeros((1, 1, 8), dtype=np.float32)
        flat = Client(
            server.base_url, timeout=0.25, timeout_per_sequence=0, max_retries=0, env_file=None
        )
        scaled = Client(
            server.base_url, timeout=0.25, timeout_per_sequence=1.0, max_retries=0, env_file=None
        )
        with flat, scaled:
            with pytest.raises(APITimeoutError):
                flat.logits(prompts, ["good film [MASK]", "bad film [MASK]"], [5])
            assert scaled.logits(prompts, ["good film [MASK]", "bad film [MASK]"], [5]).shape == (
                1,
                2,
                1,
            )
