"""A request httpx will not send is a settings error: one attempt, a clear message, no key.

The defect: ``BBT_API_KEY=`` (as ``cp .env.example .env`` left it) became the header
``Authorization: Bearer ``, h11 refused it with ``LocalProtocolError``, and the client
reported a *connection* failure after retrying it four times.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from bbt.client import AsyncClient, Client
from bbt.client._base import is_retryable, transport_error
from bbt.errors import APIConnectionError, ConfigurationError, MalformedRequestError
from bbt.server.mock import MockBackend
from bbt.testing import live_server

from .fakes import API_KEY, FakeService, Waits

MakeClient = Callable[..., Client]
MakeAsync = Callable[..., AsyncClient]

# What h11 says about a refused header: the value quoted as an escaped bytes literal, in
# which a key holding a control character no longer reads as the key itself.
_KEY_WITH_NEWLINE = "sk-live-\n-0123456789"
_H11_MESSAGE = f"Illegal header value {f'Bearer {_KEY_WITH_NEWLINE}'.encode()!r}"


@pytest.mark.parametrize(
    "failure",
    [
        httpx.LocalProtocolError(_H11_MESSAGE),
        httpx.LocalProtocolError(f"Illegal header value {f'Bearer {API_KEY} '.encode()!r}"),
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'localhost://'."),
    ],
    ids=["control-character", "trailing-space", "no-scheme"],
)
def test_a_request_httpx_refuses_is_sent_once_and_never_retried(
    make_client: MakeClient, service: FakeService, waits: Waits, failure: httpx.HTTPError
) -> None:
    service.faults.extend([failure] * 5)
    client = make_client(max_retries=3)
    with pytest.raises(MalformedRequestError) as info:
        client.health()
    assert len(service.requests) == 1
    assert client.usage.requests == 1
    assert client.usage.retries == 0
    assert waits == []
    err = info.value
    assert not isinstance(err, APIConnectionError)
    assert isinstance(err, ConfigurationError)  # what it is, for callers that sort by cause
    assert "settings problem" in str(err)
    assert isinstance(err.__cause__, type(failure))
    for secret in (API_KEY, "sk-live-", "0123456789"):
        assert secret not in str(err)


@pytest.mark.anyio
async def test_the_async_client_does_not_retry_it_either(
    make_async_client: MakeAsync, service: FakeService, waits: Waits
) -> None:
    service.faults.extend([httpx.LocalProtocolError(_H11_MESSAGE)] * 5)
    async with make_async_client(max_retries=3) as client:
        with pytest.raises(MalformedRequestError):
            await client.health()
    assert len(service.requests) == 1
    assert waits == []


def test_the_mapping_withholds_quoted_values_and_the_key() -> None:
    err = transport_error(httpx.LocalProtocolError(_H11_MESSAGE), None)
    assert isinstance(err, MalformedRequestError)
    assert not is_retryable(err)
    assert "LocalProtocolError: Illegal header value <value withheld>" in str(err)
    assert "sk-live" not in str(err)
    assert "0123456789" not in str(err)
    # Connection failures keep their meaning (and stay retryable).
    dropped = transport_error(httpx.RemoteProtocolError("peer closed"), None)
    assert type(dropped) is APIConnectionError
    assert is_retryable(dropped)


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize("key", ["sk-with space", "sk-\n-newline", "sk-clé", "sk-\x00"])
def test_a_key_no_header_can_carry_is_refused_before_any_request(key: str) -> None:
    sent: list[httpx.Request] = []

    def record(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    with pytest.raises(ConfigurationError, match="BBT_API_KEY") as info:
        Client("http://bbt.test", api_key=key, transport=httpx.MockTransport(record))
    assert sent == []
    assert key.strip() not in str(info.value)
    with pytest.raises(ConfigurationError, match="BBT_API_KEY"):
        AsyncClient("http://bbt.test", api_key=key, env_file=None)


@pytest.mark.usefixtures("no_env")
def test_a_url_without_a_scheme_fails_once_over_the_real_transport() -> None:
    # httpx.UnsupportedProtocol is raised before any socket is opened: no network needed.
    with Client("localhost:8000", env_file=None, max_retries=3) as client:
        client._sleep = lambda s: pytest.fail("a settings error must not be retried")
        with pytest.raises(MalformedRequestError, match="http:// or https://"):
            client.health()
    assert client.usage.requests == 1


@pytest.mark.usefixtures("no_env")
def test_the_readme_dotenv_reaches_a_real_server(tmp_path: Path) -> None:
    # The reported failure, end to end over a real socket: `BBT_API_KEY=` in .env.
    with live_server(MockBackend()) as server:
        (tmp_path / ".env").write_text(f"BBT_BASE_URL={server.base_url}\nBBT_API_KEY=\n")
        with Client(max_retries=0) as client:
            assert client.models()[0].id == "bbt-mock"
            assert client.settings.api_key is None
