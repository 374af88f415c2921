"""Protocol 1.1 is additive: v1 clients keep working against new servers, new clients
against v1 servers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from bbt.client import Client
from bbt.protocol import (
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    SESSIONS_CAPABILITY,
    ModelList,
    ProjectionSpec,
    SessionOpenRequest,
    Tensor,
    negotiate,
    speaks,
    wire_json,
)
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app
from bbt.testing import CoreTransport

from . import v1_models as v1

KEY = "versioning-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def test_negotiation_answers_the_newest_version_both_speak() -> None:
    assert negotiate(None) == "1"
    assert negotiate("1") == "1"
    assert negotiate("1.1") == "1.1"
    assert negotiate(" 1.1 ") == "1.1"
    assert negotiate("1.7") == PROTOCOL_VERSION  # a future client gets what we speak
    assert negotiate("garbage") == "1"
    assert negotiate("0.9") == "1"


def test_a_client_reads_any_minor_version_of_its_major() -> None:
    assert speaks("1")
    assert speaks("1.1")
    assert speaks(None)
    assert speaks("1.9")
    assert not speaks("2")
    assert not speaks("2.0")


class _Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keep: int = 1
    new: int = Field(default=2, json_schema_extra={"since": "1.1"})


class _Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    items: list[_Inner]
    one: _Inner
    future: str = Field(default="x", json_schema_extra={"since": "1.2"})


def test_wire_json_drops_fields_newer_than_the_client_at_any_depth() -> None:
    doc = _Outer(items=[_Inner(), _Inner()], one=_Inner())
    assert wire_json(doc, "1") == b'{"items":[{"keep":1},{"keep":1}],"one":{"keep":1}}'
    newer = wire_json(doc, "1.1")
    assert b'"new":2' in newer
    assert b"future" not in newer


# --------------------------------------------------------------------------- v1 clients


def _v1_exchanges(call: Callable[..., httpx.Response]) -> list[tuple[httpx.Response, type[Any]]]:
    """Every kind of answer a v1 client can get, with the v1 model it must parse as."""
    info = v1.ModelList.model_validate_json(call("GET", "/v1/models").content).data[0]
    text = f"a fine film . It was {info.mask_token} ."
    prompts = Tensor.from_numpy(np.full((2, 3, info.hidden_size), 0.01, np.float32))
    logits = {
        "model": info.id,
        "prompts": prompts.model_dump(),
        "texts": [text, text],
        "candidate_ids": [5, 6],
    }
    out: list[tuple[httpx.Response, type[Any]]] = [
        (call("GET", "/v1/models"), v1.ModelList),
        (call("GET", "/healthz"), v1.Health),
        (
            call("POST", "/v1/tokenize", json={"model": info.id, "texts": ["hi"]}),
            v1.TokenizeResponse,
        ),
        (
            call("POST", "/v1/embeddings", json={"model": info.id, "token_ids": [1, 2]}),
            v1.EmbeddingsResponse,
        ),
        (call("POST", "/v1/logits", json=logits), v1.LogitsResponse),
        # Errors: every one an envelope a v1 client can read.
        (call("POST", "/v1/logits", json={**logits, "texts": ["no mask"]}), v1.ErrorEnvelope),
        (call("POST", "/v1/logits", content=b"{not json"), v1.ErrorEnvelope),
        (call("GET", "/v1/nowhere"), v1.ErrorEnvelope),
        (call("GET", "/v1/logits"), v1.ErrorEnvelope),
        (call("POST", "/v1/logits", json=logits, auth=False), v1.ErrorEnvelope),
        # Session routes are 1.1, but what they answer an old client must still parse.
        (call("DELETE", "/v1/sessions/not-a-session"), v1.ErrorEnvelope),
        (call("POST", "/v1/sessions/nope/logits", json={"z": 1}), v1.ErrorEnvelope),
    ]
    return out


def _app_call(client: TestClient) -> Callable[..., httpx.Response]:
    def call(method: str, path: str, auth: bool = True, **kwargs: Any) -> httpx.Response:
        return client.request(method, path, headers=AUTH if auth else {}, **kwargs)

    return call


def _core_call(transport: httpx.BaseTransport) -> Callable[..., httpx.Response]:
    http = httpx.Client(transport=transport, base_url="http://bbt.test")

    def call(method: str, path: str, auth: bool = True, **kwargs: Any) -> httpx.Response:
        return http.request(method, path, headers=AUTH if auth else {}, **kwargs)

    return call


@pytest.mark.parametrize("via", ["app", "core"])
def test_every_answer_to_a_v1_client_parses_with_the_v1_models(via: str) -> None:
    settings = ServerSettings(api_keys=[SecretStr(KEY)])
    backend = MockBackend()
    if via == "app":
        call = _app_call(TestClient(create_app(backend, settings)))
    else:
        call = _core_call(CoreTransport(backend, settings))
    exchanges = _v1_exchanges(call)
    statuses = {r.status_code for r, _ in exchanges}
    assert statuses >= {200, 400, 401, 404, 405, 422}
    for response, model in exchanges:
        assert response.headers[PROTOCOL_HEADER] == "1", response.request.url
        model.model_validate_json(response.content)  # raises on any unknown field
    info = ModelList.model_validate_json(exchanges[0][0].content).data[0]
    assert info.capabilities == []  # what a v1 client saw is what it parsed


def test_a_new_client_is_answered_in_1_1_and_sees_the_capabilities() -> None:
    client = TestClient(create_app(MockBackend(), ServerSettings(api_keys=[])))
    r = client.get("/v1/models", headers={PROTOCOL_HEADER: "1.1"})
    assert r.headers[PROTOCOL_HEADER] == "1.1"
    info = ModelList.model_validate_json(r.content).data[0]
    assert info.protocol_version == "1.1"
    assert SESSIONS_CAPABILITY in info.capabilities
    with pytest.raises(ValueError, match="capabilities"):
        v1.ModelList.model_validate_json(r.content)  # why v1 clients must not get it


def test_sessions_can_be_turned_off_and_are_then_not_advertised() -> None:
    client = TestClient(create_app(MockBackend(), ServerSettings(api_keys=[], sessions=False)))
    info = ModelList.model_validate_json(
        client.get("/v1/models", headers={PROTOCOL_HEADER: "1.1"}).content
    ).data[0]
    assert info.capabilities == []
    spec = ProjectionSpec(
        seed=0, n_tokens=2, hidden_size=info.hidden_size, dim=4, embedding_std=0.1
    )
    r = client.post(
        "/v1/sessions",
        json=SessionOpenRequest(model=info.id, projection=spec).model_dump(mode="json"),
        headers={PROTOCOL_HEADER: "1.1"},
    )
    assert r.status_code == 404
    assert "does not offer projection sessions" in r.json()["error"]["message"]


# --------------------------------------------------------------------------- new clients


class V1OnlyServer(httpx.BaseTransport):
    """A server from before 1.1: it ignores what the client announces and answers v1."""

    def __init__(self) -> None:
        self.inner = CoreTransport(MockBackend(), ServerSettings(api_keys=[], sessions=False))
        self.announced: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.announced.append(request.headers.get(PROTOCOL_HEADER))
        del request.headers[PROTOCOL_HEADER]
        return self.inner.handle_request(request)


def test_a_new_client_against_a_v1_server_sees_no_capabilities_and_works() -> None:
    server = V1OnlyServer()
    with Client("http://old.test", transport=server, env_file=None) as client:
        info = client.model_info()
        assert info.capabilities == []
        assert not client.supports_sessions()
        texts = [f"good . It was {info.mask_token} ."]
        out = client.logits(np.zeros((2, 1, info.hidden_size), np.float32), texts, [3, 4])
        assert out.shape == (2, 1, 2)
    assert server.announced
    assert set(server.announced) == {PROTOCOL_VERSION}


def test_the_client_announces_1_5() -> None:
    server = V1OnlyServer()
    with Client("http://old.test", transport=server, env_file=None) as client:
        client.health()
    assert server.announced == ["1.5"]
