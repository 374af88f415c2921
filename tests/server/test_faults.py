"""Fault injection: configured rates are honoured, the sequence is reproducible, and each
fault looks on the wire the way a real failure does."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from bbt.protocol import ErrorEnvelope, ErrorType, ModelList
from bbt.server import FaultConfig, MockBackend
from bbt.server.faults import FaultInjector
from bbt.testing import live_server

from .helpers import assert_envelope

MakeClient = Callable[..., TestClient]
N = 400


def _statuses(client: TestClient, n: int = N) -> list[str]:
    out = []
    for _ in range(n):
        r = client.get("/v1/models")
        if r.status_code == 200:
            try:
                ModelList.model_validate_json(r.content)
                out.append("ok")
            except ValueError:
                out.append("malformed")
        else:
            out.append(str(r.status_code))
    return out


def test_rates_are_honoured(mock: MockBackend, make_client: MakeClient) -> None:
    faults = FaultConfig(rate_429=0.2, rate_500=0.1, rate_503=0.15, rate_malformed=0.1, seed=3)
    counts = Counter(_statuses(make_client(mock, faults=faults)))
    expected = {"429": 0.2, "500": 0.1, "503": 0.15, "malformed": 0.1, "ok": 0.45}
    for key, rate in expected.items():
        # Binomial std at N=400 is at most 2.5 points; allow 4 std.
        assert abs(counts[key] / N - rate) < 0.1, (key, counts)


def test_fault_sequence_is_deterministic(mock: MockBackend, make_client: MakeClient) -> None:
    faults = FaultConfig(rate_429=0.3, rate_503=0.3, seed=11)
    first = _statuses(make_client(mock, faults=faults), 60)
    second = _statuses(make_client(mock, faults=faults), 60)
    other = _statuses(make_client(mock, faults=faults.model_copy(update={"seed": 12})), 60)
    assert first == second
    assert first != other


def test_injector_counts() -> None:
    inj = FaultInjector(FaultConfig(rate_drop=0.5, seed=0))
    kinds = [inj.next().kind for _ in range(1000)]
    assert inj.requests == 1000
    assert inj.counts["drop"] == kinds.count("drop")
    assert 400 < kinds.count("drop") < 600


def test_429_carries_retry_after_and_envelope(mock: MockBackend, make_client: MakeClient) -> None:
    client = make_client(mock, faults=FaultConfig(rate_429=1.0, retry_after_s=7))
    r = client.get("/v1/models")
    env = assert_envelope(r, 429)
    assert env.error.type == ErrorType.rate_limit
    assert r.headers["retry-after"] == "7"


@pytest.mark.parametrize(("rate", "status"), [("rate_500", 500), ("rate_503", 503)])
def test_5xx_are_envelopes(
    mock: MockBackend, make_client: MakeClient, rate: str, status: int
) -> None:
    client = make_client(mock, faults=FaultConfig(**{rate: 1.0}))
    env = assert_envelope(client.post("/v1/logits", json={}), status)
    assert env.error.type in (ErrorType.server_error, ErrorType.unavailable)


def test_malformed_bodies_are_not_protocol_json(mock: MockBackend, make_client: MakeClient) -> None:
    client = make_client(mock, faults=FaultConfig(rate_malformed=1.0, seed=5))
    for _ in range(20):
        r = client.get("/v1/models")
        assert r.status_code == 200
        with pytest.raises(ValueError):  # noqa: PT011 - JSON or validation error, either way
            ModelList.model_validate_json(r.content)
        with pytest.raises(ValueError):  # noqa: PT011
            ErrorEnvelope.model_validate(json.loads(r.content))


def test_faults_spare_non_api_routes(mock: MockBackend, make_client: MakeClient) -> None:
    client = make_client(mock, faults=FaultConfig(rate_503=1.0))
    assert client.get("/healthz").status_code == 200
    assert client.get("/openapi.json").status_code == 200


def test_latency_is_added(mock: MockBackend, make_client: MakeClient) -> None:
    client = make_client(mock, faults=FaultConfig(latency_ms=60, jitter_ms=20))
    t0 = time.perf_counter()
    client.get("/v1/models")
    assert time.perf_counter() - t0 >= 0.06
    t0 = time.perf_counter()
    client.get("/healthz")
    assert time.perf_counter() - t0 < 0.06


def test_rates_must_sum_to_at_most_one() -> None:
    with pytest.raises(ValidationError, match="sum"):
        FaultConfig(rate_429=0.6, rate_503=0.6)
    with pytest.raises(ValidationError):
        FaultConfig(rate_drop=-0.1)
    assert not FaultConfig().active
    assert FaultConfig(rate_drop=0.1).active


def test_drop_closes_the_connection_on_a_live_server() -> None:
    with live_server(MockBackend(), faults=FaultConfig(rate_drop=1.0)) as server:
        with pytest.raises(httpx.RemoteProtocolError), httpx.Client() as client:
            client.get(f"{server.base_url}/v1/models")
        # The server itself survives and keeps serving other routes.
        assert httpx.get(f"{server.base_url}/healthz").status_code == 200


def test_timeout_fault_is_a_slow_answer_on_a_live_server() -> None:
    with live_server(MockBackend(), faults=FaultConfig(rate_timeout=1.0, timeout_s=1)) as server:
        t0 = time.perf_counter()
        with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.3) as client:
            client.get(f"{server.base_url}/v1/models")
        assert time.perf_counter() - t0 < 2
