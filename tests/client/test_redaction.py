"""The API key never shows: not in reprs, exception text, nor log records."""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from bbt.client import Client, ClientSettings
from bbt.client._base import redact_url
from bbt.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    ProtocolError,
    ServerError,
)
from bbt.protocol import ErrorType

from .fakes import API_KEY, FakeService, error_response, tagged_prompts, texts

MakeClient = Callable[..., Client]


def test_key_is_sent_as_bearer(make_client: MakeClient, service: FakeService) -> None:
    make_client().health()
    assert service.requests[0].headers["Authorization"] == f"Bearer {API_KEY}"
    assert service.requests[0].headers["X-BBT-Protocol"] == "1.5"
    assert service.requests[0].headers["User-Agent"].startswith("bbt/")


def test_no_key_sends_no_authorization(make_client: MakeClient, service: FakeService) -> None:
    service.api_key = None
    client = Client("http://bbt.test", transport=httpx.MockTransport(service), env_file=None)
    try:
        client.health()
    finally:
        client.close()
    assert "Authorization" not in service.requests[0].headers
    assert "api_key=None" in repr(client)


def test_reprs_hide_the_key(make_client: MakeClient) -> None:
    client = make_client()
    settings = ClientSettings(base_url="http://x", api_key=API_KEY, env_file=None)
    for text in (repr(client), str(client), repr(settings), str(settings)):
        assert API_KEY not in text
    assert "api_key='***'" in repr(client)


def test_401_hides_the_key(make_client: MakeClient, service: FakeService) -> None:
    service.api_key = "the-right-key"
    with pytest.raises(AuthenticationError) as info:
        make_client().health()
    for text in (str(info.value), repr(info.value), info.value.message):
        assert API_KEY not in text


def test_server_echoing_the_key_is_redacted(make_client: MakeClient, service: FakeService) -> None:
    service.faults.extend(
        [
            error_response(400, ErrorType.invalid_request, f"bad header Bearer {API_KEY}"),
            httpx.Response(502, text=f"proxy saw {API_KEY}"),
            httpx.Response(200, text=f'{{"status": "{API_KEY}"}}'),
        ]
    )
    client = make_client(max_retries=0)
    for cls in (BadRequestError, ServerError):
        with pytest.raises(cls) as info:
            client.health()
        assert API_KEY not in str(info.value)
        assert "***" in str(info.value)
    # A bad success body is summarised by field and reason, never by its content.
    with pytest.raises(ProtocolError) as bad_body:
        client.health()
    assert API_KEY not in str(bad_body.value)
    assert "status" in str(bad_body.value)


def test_transport_error_text_is_redacted(make_client: MakeClient, service: FakeService) -> None:
    service.faults.append(httpx.ConnectError(f"failed with {API_KEY}"))
    with pytest.raises(APIConnectionError) as info:
        make_client(max_retries=0).health()
    assert API_KEY not in str(info.value)


def test_logs_never_hold_the_key(
    make_client: MakeClient, service: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    service.faults.extend(
        [httpx.Response(503), httpx.ConnectError("refused"), httpx.ReadTimeout("slow")]
    )
    with caplog.at_level(logging.DEBUG):
        client = make_client(max_retries=3)
        client.health()
        client.logits(tagged_prompts(1), texts(1), [5])
    assert caplog.records, "the retries should have been logged"
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
        assert API_KEY not in repr(record.args)
    assert API_KEY not in caplog.text


# --------------------------------------------------------------------------- URL credentials

PASSWORD = "pw-in-the-url-5e1f"


@pytest.mark.parametrize(
    ("url", "want"),
    [
        (f"http://user:{PASSWORD}@127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        (f"https://{PASSWORD}@bbt.test", "https://bbt.test"),
        (f"http://user:p@ss{PASSWORD}@bbt.test/x?y=1", "http://bbt.test/x?y=1"),
        (f"vllm+http://u:{PASSWORD}@h:1/v1?model=m", "vllm+http://h:1/v1?model=m"),
        (f"http://h/?api_key={PASSWORD}&model=m", "http://h/?api_key=***&model=m"),
        (f"http://h/?model=m&token={PASSWORD}#top", "http://h/?model=m&token=***#top"),
        (f"http://h/?key={PASSWORD}", "http://h/?key=***"),
        ("http://bbt.test:8000", "http://bbt.test:8000"),
        ("no url here: user@example.com", "no url here: user@example.com"),
    ],
)
def test_redact_url_drops_userinfo_and_secret_query_values(url: str, want: str) -> None:
    assert redact_url(url) == want
    # Inside a message too, as errors and logs carry URLs.
    assert redact_url(f"cannot reach {url} (refused)") == f"cannot reach {want} (refused)"


def test_a_client_on_a_url_with_credentials_never_shows_them(
    no_env: None, service: FakeService, caplog: pytest.LogCaptureFixture
) -> None:
    service.api_key = None
    service.faults.append(httpx.ConnectError(f"failed on http://user:{PASSWORD}@bbt.test/v1"))
    client = Client(
        f"http://user:{PASSWORD}@bbt.test",
        transport=httpx.MockTransport(service),
        env_file=None,
        max_retries=1,
    )
    try:
        with caplog.at_level(logging.DEBUG):
            client.health()
        assert PASSWORD not in repr(client)
        assert "base_url='http://bbt.test'" in repr(client)
        # The credentials still travel, as the Basic auth httpx made of them before.
        sent = service.requests[-1]
        assert sent.headers["Authorization"] == httpx.BasicAuth("user", PASSWORD)._auth_header
        assert "@" not in str(sent.url)
        service.faults.append(httpx.ConnectError(f"failed on http://user:{PASSWORD}@bbt.test/v1"))
        with pytest.raises(APIConnectionError) as info:
            Client(
                f"http://user:{PASSWORD}@bbt.test",
                transport=httpx.MockTransport(service),
                env_file=None,
                max_retries=0,
            ).health()
    finally:
        client.close()
    assert PASSWORD not in str(info.value)
    assert "http://bbt.test/v1" in str(info.value)
    assert PASSWORD not in caplog.text
