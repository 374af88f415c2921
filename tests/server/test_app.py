"""create_app's HTTP behaviour: envelopes for every error class, auth, size limits, headers,
logs, the catch-all 500, and scheduling of backend calls."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator

import anyio
import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from bbt.protocol import (
    PROTOCOL_V1,
    ErrorEnvelope,
    ErrorType,
    ModelInfo,
    ProtocolViolation,
    Usage,
    wire_json,
)
from bbt.protocol._models import V1_ERROR_TYPES
from bbt.server import MockBackend, ServerSettings
from bbt.server._core import STATUS_OF
from bbt.server.app import create_app
from bbt.server.backend import FloatArray, IntArray
from bbt.testing import CoreTransport

from .helpers import assert_envelope, logits_body

MakeClient = Callable[..., TestClient]
KEY = "sk-test-5f1c9a2b7e"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def client(mock: MockBackend, make_client: MakeClient) -> TestClient:
    return make_client(mock)


# ------------------------------------------------------------------ envelopes per error class


def test_malformed_json_is_400(client: TestClient) -> None:
    r = client.post(
        "/v1/logits", content=b'{"model": ', headers={"content-type": "application/json"}
    )
    env = assert_envelope(r, 400)
    assert env.error.type == ErrorType.invalid_request


def test_body_without_json_content_type_is_400(client: TestClient) -> None:
    assert_envelope(client.post("/v1/logits", content=b"not json"), 400)


def test_validation_error_is_422_with_dotted_field(client: TestClient, mock: MockBackend) -> None:
    body = logits_body(mock.info)
    body["prompts"]["shape"] = [1, "x", 64]
    env = assert_envelope(client.post("/v1/logits", json=body), 422)
    assert env.error.field == "prompts.shape.1"
    assert "x" not in env.error.message.split()  # the input is not echoed


def test_missing_field_is_422(client: TestClient) -> None:
    env = assert_envelope(client.post("/v1/tokenize", json={"texts": ["a"]}), 422)
    assert env.error.field == "model"


def test_extra_field_is_422(client: TestClient, mock: MockBackend) -> None:
    body = {"model": mock.info.id, "texts": ["a"], "surprise": 1}
    env = assert_envelope(client.post("/v1/tokenize", json=body), 422)
    assert env.error.field == "surprise"


def test_unknown_route_is_404(client: TestClient) -> None:
    env = assert_envelope(client.get("/v1/nothing"), 404)
    assert env.error.type == ErrorType.not_found
    assert_envelope(client.get("/"), 404)


def test_wrong_method_is_405_with_allow(client: TestClient) -> None:
    r = client.get("/v1/logits")
    assert_envelope(r, 405)
    assert r.headers["allow"] == "POST"


class _Exploding(MockBackend):
    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        raise RuntimeError("secret-path /home/me/weights.bin exploded")


def test_unexpected_exception_is_500_without_traceback(
    make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    backend = _Exploding()
    client = make_client(backend)
    with caplog.at_level(logging.ERROR, logger="bbt.server"):
        r = client.post("/v1/logits", json=logits_body(backend.info))
    env = assert_envelope(r, 500)
    assert env.error.type == ErrorType.server_error
    assert "secret-path" not in r.text
    assert "Traceback" not in r.text
    assert any("exploded" in (rec.exc_text or "") for rec in caplog.records)


class _BadShape(MockBackend):
    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        out, usage = super().logits(prompts, texts, candidate_ids)
        return out[:, :, :1], usage


def test_backend_returning_wrong_shape_is_500(make_client: MakeClient) -> None:
    backend = _BadShape()
    client = make_client(backend)
    r = client.post("/v1/logits", json=logits_body(backend.info))
    assert assert_envelope(r, 500).error.type == ErrorType.server_error


def test_backend_protocol_violation_maps_to_its_status(
    make_client: MakeClient, mock: MockBackend
) -> None:
    # The mock rejects a text longer than its sequence length once tokenised.
    small = MockBackend(max_sequence_length=8)
    client = make_client(small)
    body = logits_body(small.info, texts=[" ".join(["w"] * 20) + " [MASK]"])
    env = assert_envelope(client.post("/v1/logits", json=body), 422)
    assert env.error.field == "texts.0"


# ------------------------------------------------------------------ headers


def test_every_response_has_protocol_headers(client: TestClient) -> None:
    for r in (
        client.get("/healthz"),
        client.get("/v1/models"),
        client.get("/nope"),
        client.get("/openapi.json"),
        client.post("/v1/tokenize", json={}),
    ):
        assert r.headers["x-bbt-protocol"] == "1"
        assert len(r.headers["x-request-id"]) >= 8


def test_request_id_is_echoed_when_well_formed(client: TestClient) -> None:
    r = client.get("/healthz", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/healthz", headers={"x-request-id": "bad id\twith spaces"})
    assert r.headers["x-request-id"] != "bad id\twith spaces"


# ------------------------------------------------------------------ authentication


@pytest.fixture
def authed(mock: MockBackend, make_client: MakeClient) -> TestClient:
    return make_client(mock, ServerSettings(api_keys=[SecretStr("other-key"), SecretStr(KEY)]))


def test_auth_required_on_v1(authed: TestClient) -> None:
    env = assert_envelope(authed.get("/v1/models"), 401)
    assert env.error.type == ErrorType.authentication
    r = authed.get("/v1/models", headers={"authorization": "Bearer wrong"})
    assert assert_envelope(r, 401).error.message == "invalid API key"
    assert r.headers["www-authenticate"] == "Bearer"
    assert_envelope(authed.get("/v1/models", headers={"authorization": KEY}), 401)
    assert_envelope(authed.get("/v1/nothing"), 401)


def test_auth_ok_with_any_configured_key(authed: TestClient) -> None:
    for key in (KEY, "other-key"):
        assert authed.get("/v1/models", headers={"authorization": f"Bearer {key}"}).is_success
    assert authed.get("/v1/models", headers={"authorization": f"bearer {KEY}"}).is_success


def test_healthz_and_openapi_stay_open(authed: TestClient) -> None:
    assert authed.get("/healthz").status_code == 200
    assert authed.get("/openapi.json").status_code == 200


def test_key_never_logged(authed: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        authed.get("/v1/models", headers={"authorization": f"Bearer {KEY}"})
        authed.get("/v1/models", headers={"authorization": f"Bearer {KEY}x"})
        authed.post("/v1/tokenize", headers={"authorization": f"Bearer {KEY}"}, content=b"{")
    assert caplog.records
    for rec in caplog.records:
        assert KEY not in rec.getMessage()
        assert KEY not in str(rec.__dict__)


def test_access_log_line(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bbt.server.access"):
        r = client.get("/v1/models", headers={"x-request-id": "req-1"})
    (rec,) = [r for r in caplog.records if r.name == "bbt.server.access"]
    assert rec.__dict__["method"] == "GET"
    assert rec.__dict__["path"] == "/v1/models"
    assert rec.__dict__["status"] == 200
    assert rec.__dict__["bytes_out"] == len(r.content)
    assert rec.__dict__["request_id"] == "req-1"
    assert rec.__dict__["duration_ms"] >= 0
    assert "GET /v1/models 200" in rec.getMessage()


# ------------------------------------------------------------------ body size


@pytest.fixture
def small(mock: MockBackend, make_client: MakeClient) -> TestClient:
    return make_client(mock, ServerSettings(api_keys=[], max_body_bytes=1024))


def test_limit_is_advertised(small: TestClient) -> None:
    assert small.get("/v1/models").json()["data"][0]["limits"]["max_body_bytes"] == 1024


def test_413_from_content_length(small: TestClient, mock: MockBackend) -> None:
    body = logits_body(mock.info, np.zeros((1, 20, 64), np.float32))
    env = assert_envelope(small.post("/v1/logits", json=body), 413)
    assert env.error.type == ErrorType.payload_too_large


def test_413_while_reading_a_chunked_body(small: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b" " * 100

    r = small.post("/v1/logits", content=chunks(), headers={"content-type": "application/json"})
    assert_envelope(r, 413)


def test_bad_content_length_is_400(small: TestClient) -> None:
    r = small.post("/v1/tokenize", content=b"{}", headers={"content-length": "-5"})
    assert_envelope(r, 400)


def test_auth_checked_before_size(mock: MockBackend, make_client: MakeClient) -> None:
    client = make_client(mock, ServerSettings(api_keys=[SecretStr(KEY)], max_body_bytes=10))
    assert_envelope(client.post("/v1/tokenize", content=b"x" * 100), 401)


# ------------------------------------------------------------------ scheduling


class _Slow(MockBackend):
    """Records how many calls overlap; each call sleeps a little."""

    def __init__(self) -> None:
        super().__init__()
        self.active = 0
        self.peak = 0
        self.order: list[int] = []
        self._lock = threading.Lock()

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        with self._lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        time.sleep(0.05)
        with self._lock:
            self.active -= 1
            self.order.append(int(texts[0]))
        return super().tokenize(texts, add_special_tokens)


@pytest.mark.anyio
async def test_backend_calls_are_serialised_fifo_and_loop_stays_free() -> None:
    backend = _Slow()
    app = create_app(backend, ServerSettings(api_keys=[]))
    transport = httpx.ASGITransport(app=app)
    health_times: list[float] = []
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def tok(i: int) -> None:
            r = await client.post("/v1/tokenize", json={"model": "bbt-mock", "texts": [str(i)]})
            assert r.status_code == 200

        async def health() -> None:
            await anyio.sleep(0.02)
            t0 = time.perf_counter()
            assert (await client.get("/healthz")).status_code == 200
            health_times.append(time.perf_counter() - t0)

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(tok, i)
                await anyio.sleep(0.001)  # fix the arrival order
            tg.start_soon(health)
    assert backend.peak == 1
    assert backend.order == [0, 1, 2, 3, 4]
    # /healthz is answered while backend calls queue (5 x 50 ms).
    assert health_times[0] < 0.1


def test_max_concurrency_allows_overlap(make_client: MakeClient) -> None:
    backend = _Slow()
    client = make_client(backend, ServerSettings(api_keys=[], max_concurrency=3))
    threads = [
        threading.Thread(
            target=client.post,
            args=("/v1/tokenize",),
            kwargs={"json": {"model": "bbt-mock", "texts": [str(i)]}},
        )
        for i in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert backend.peak >= 2


def test_info_is_the_backend_info(client: TestClient, mock: MockBackend) -> None:
    # As a v1 client (no protocol header) is told it: without the fields newer than v1.
    seen = ModelInfo.model_validate(client.get("/v1/models").json()["data"][0])
    assert seen == ModelInfo.model_validate_json(wire_json(mock.info, PROTOCOL_V1))


class _Refusing(MockBackend):
    """Raises the ProtocolViolation it is given from every tokenize call."""

    def __init__(self, error_type: ErrorType) -> None:
        super().__init__()
        self.error_type = error_type

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        raise ProtocolViolation("refused", field="texts.0", error_type=self.error_type)


@pytest.mark.parametrize("error_type", list(ErrorType))
def test_every_error_class_has_its_status(make_client: MakeClient, error_type: ErrorType) -> None:
    client = make_client(_Refusing(error_type))
    r = client.post("/v1/tokenize", json={"model": "bbt-mock", "texts": ["a"]})
    env = assert_envelope(r, STATUS_OF[error_type])
    # A v1 client (no X-BBT-Protocol: 1.1) is told the v1 name of a type new in 1.1.
    assert env.error.type == V1_ERROR_TYPES.get(error_type, error_type)
    assert env.error.field == "texts.0"
    newer = client.post(
        "/v1/tokenize",
        json={"model": "bbt-mock", "texts": ["a"]},
        headers={"X-BBT-Protocol": "1.1"},
    )
    assert newer.status_code == STATUS_OF[error_type]
    assert ErrorEnvelope.model_validate_json(newer.content).error.type == error_type
    # The in-process transport answers identically.
    core = httpx.Client(transport=CoreTransport(_Refusing(error_type)), base_url="http://x")
    same = core.post("/v1/tokenize", json={"model": "bbt-mock", "texts": ["a"]})
    assert (same.status_code, same.json()) == (r.status_code, r.json())


def test_status_table_is_complete() -> None:
    assert set(STATUS_OF) == set(ErrorType)
    assert all(400 <= s < 600 for s in STATUS_OF.values())
    assert all(s >= 500 for t, s in STATUS_OF.items() if t.value in ("server_error", "unavailable"))
