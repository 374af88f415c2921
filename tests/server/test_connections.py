"""Idle and slow connections cannot starve the server (issue 18, item 3).

Each test serves the app with uvicorn exactly as ``bbt serve`` / ``bbt mock-server`` do
(``ServerSettings.uvicorn_options()``) on a loopback port and talks raw TCP to it, because
the attacks are below HTTP: sockets that never send a byte, a request head that never ends,
a body that trickles. Timeouts are a fraction of a second here (settings), so every test is
bounded; every socket is closed in a ``finally``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import pytest
from pydantic import SecretStr

from bbt.server import MockBackend, ServerSettings
from bbt.server._connections import (
    ConnectionLimits,
    ConnectionTable,
    guarded_protocol,
    refusal_response,
)
from bbt.server.app import create_app

from .asgi import uvicorn_server

KEY = "sk-conn-test-key"
AUTH = {"authorization": f"Bearer {KEY}"}
#: What one test may wait for the server to act, at most (its timeouts are far shorter).
PATIENCE_S = 5.0


def _settings(**kw: object) -> ServerSettings:
    return ServerSettings(api_keys=[SecretStr(KEY)], **kw)  # type: ignore[arg-type]


@contextmanager
def _served(settings: ServerSettings) -> Iterator[tuple[str, int]]:
    """(base URL, port) of the mock app under uvicorn with ``settings``' limits."""
    with uvicorn_server(create_app(MockBackend(), settings), settings) as url:
        yield url, int(url.rsplit(":", 1)[1])


def _connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(PATIENCE_S)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def _read_until_closed(sock: socket.socket, timeout: float = PATIENCE_S) -> bytes:
    """Everything the server sends until it closes; fails if it keeps the socket open."""
    sock.settimeout(timeout)
    data = b""
    try:
        for _ in range(1000):  # bounded: a response is a few hundred bytes
            chunk = sock.recv(65536)
            if not chunk:
                return data
            data += chunk
    except ConnectionResetError:
        return data
    except TimeoutError:
        pytest.fail(f"the server kept the connection open for {timeout}s (got {data[:80]!r})")
    pytest.fail("the server sent more than expected")


def _status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:80]
    return int(response.split(b" ", 2)[1])


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Room for 512 client sockets plus the server's ends of them in this one process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 2048
    if soft != resource.RLIM_INFINITY and soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"needs {need} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# ------------------------------------------------------------------ idle sockets


def test_an_authenticated_request_completes_with_512_idle_sockets_open(many_fds: None) -> None:
    # Default limits: 128 connections used to be the whole server's budget, and 128 idle
    # sockets (no auth, no bytes) made every request a bare 503 for as long as they stayed.
    with _served(_settings()) as (url, port), ExitStack() as idle:
        for _ in range(512):
            idle.enter_context(_connect(port))
        time.sleep(0.3)  # let the server accept them all
        started = time.monotonic()
        r = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=PATIENCE_S)
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < PATIENCE_S
        assert httpx.get(f"{url}/healthz", timeout=PATIENCE_S).status_code == 200


def test_idle_sockets_from_many_addresses_do_not_lock_out_another_client() -> None:
    # 4 x 40 idle sockets from 127.0.0.2-5 exceed a 128-connection server without any one
    # address passing its own bound: the least recently active idle ones make room.
    with _served(_settings()) as (url, port), ExitStack() as idle:
        for n in range(160):
            idle.enter_context(_connect(port, source=f"127.0.0.{2 + n % 4}"))
        time.sleep(0.3)
        r = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=PATIENCE_S)
        assert r.status_code == 200, r.text


def test_one_address_cannot_hold_more_busy_connections_than_its_bound() -> None:
    settings = _settings(max_connections_per_client=2, body_timeout_s=3.0)
    head = (
        b"POST /v1/tokenize HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{"
    )
    with _served(settings) as (url, port), ExitStack() as held:
        for _ in range(2):  # two requests waiting for their bodies: busy, never evicted
            sock = held.enter_context(_connect(port, source="127.0.0.2"))
            sock.sendall(head)
        time.sleep(0.2)
        third = held.enter_context(_connect(port, source="127.0.0.2"))
        refused = _read_until_closed(third)
        assert _status(refused) == 503
        assert b"retry-after:" in refused.lower()
        assert b'"type":"unavailable"' in refused.replace(b" ", b"")
        # Another address is not affected by the first one's bound.
        r = httpx.get(f"{url}/v1/models", headers=AUTH, timeout=PATIENCE_S)
        assert r.status_code == 200


# ------------------------------------------------------------------ request head timeout


def test_a_silent_connection_is_closed_after_the_header_timeout() -> None:
    with _served(_settings(header_timeout_s=0.3)) as (_, port):
        # The clock starts before the server can: it cannot close before the timeout.
        started = time.monotonic()
        with _connect(port) as sock:
            assert _read_until_closed(sock) == b""
        assert 0.29 < time.monotonic() - started < PATIENCE_S


def test_a_partial_request_head_is_closed_after_the_header_timeout() -> None:
    with _served(_settings(header_timeout_s=0.3)) as (url, port):
        started = time.monotonic()
        with _connect(port) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            assert _read_until_closed(sock) == b""
        assert 0.29 < time.monotonic() - started < PATIENCE_S
        assert httpx.get(f"{url}/healthz", timeout=PATIENCE_S).status_code == 200


def test_a_partial_head_after_a_keep_alive_request_is_closed_too() -> None:
    # uvicorn's keep-alive timer stops at the first byte of the next request; the head
    # timeout must take over from there, not only on a fresh connection.
    settings = _settings(header_timeout_s=0.3, keep_alive_s=30)
    with _served(settings) as (_, port), _connect(port) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
        first = sock.recv(65536)
        assert _status(first) == 200
        time.sleep(0.5)  # longer than the head timeout: keep-alive idling is not a slow head
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        assert _read_until_closed(sock) == b""
        assert 0.29 < time.monotonic() - started < PATIENCE_S


def test_a_request_slower_than_the_header_timeout_is_not_cut() -> None:
    # The head timeout ends when the head is complete: a body that takes longer (within
    # the body timeout) is answered.
    settings = _settings(header_timeout_s=0.2, body_timeout_s=5.0)
    body = b'{"model": "bbt-mock", "texts": ["a b"]}'
    with _served(settings) as (_, port), _connect(port) as sock:
        sock.sendall(
            b"POST /v1/tokenize HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
            + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + b"Content-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
        )
        for piece in (body[:10], body[10:20], body[20:]):
            time.sleep(0.2)
            sock.sendall(piece)
        assert _status(_read_until_closed(sock)) == 200


# ------------------------------------------------------------------ body timeout


def _stalled_post(content_length: int) -> bytes:
    return (
        b"POST /v1/tokenize HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\nContent-Length: "
        + str(content_length).encode()
        + b"\r\n\r\n"
    )


def test_a_stalled_body_gets_408_and_the_server_keeps_serving() -> None:
    with _served(_settings(body_timeout_s=0.3)) as (url, port), _connect(port) as sock:
        started = time.monotonic()
        sock.sendall(_stalled_post(100) + b'{"model"')
        response = _read_until_closed(sock)
        assert 0.29 < time.monotonic() - started < PATIENCE_S
        assert _status(response) == 408
        assert b"connection: close" in response.lower()
        assert b'"type":"invalid_request"' in response.replace(b" ", b"")
        assert httpx.get(f"{url}/v1/models", headers=AUTH, timeout=PATIENCE_S).status_code == 200


def test_a_trickled_body_gets_408_at_the_total_deadline() -> None:
    # One byte every 0.1 s never stalls for long: the deadline is for the whole body.
    with _served(_settings(body_timeout_s=0.5)) as (_, port), _connect(port) as sock:
        sock.sendall(_stalled_post(100))
        started = time.monotonic()
        sock.settimeout(0.1)
        response = b""
        for _ in range(40):  # bounded: 4 s at most, the deadline is 0.5 s
            try:
                sock.sendall(b" ")
                response += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if response.endswith(b"}"):
                break
        assert response, "no answer to a body trickled past the deadline"
        assert _status(response) == 408
        assert time.monotonic() - started < PATIENCE_S


# ------------------------------------------------------------------ the table's rules


class _Conn:
    """A stand-in connection: an address, a last activity time, busy or idle."""

    def __init__(self, client: str, last_active: float, busy: bool = False) -> None:
        self.client = client
        self.last_active = last_active
        self.busy = busy
        self.closed = False

    @property
    def idle(self) -> bool:
        return not self.busy

    def close(self) -> None:
        self.closed = True


def _table(total: int = 3, per_client: int = 2) -> ConnectionTable:
    return ConnectionTable(ConnectionLimits(total, per_client, header_timeout_s=1.0))


def test_the_least_recently_active_idle_connection_makes_room() -> None:
    table = _table(total=3, per_client=3)
    old, busy, recent = _Conn("a", 1.0), _Conn("b", 0.5, busy=True), _Conn("c", 2.0)
    for conn in (old, busy, recent):
        assert table.admit(conn) is None
    newcomer = _Conn("d", 3.0)
    assert table.admit(newcomer) is None
    assert old.closed
    assert not busy.closed
    assert not recent.closed
    assert len(table) == 3
    assert table.stats.evicted == 1


def test_when_every_connection_is_busy_the_newcomer_is_refused() -> None:
    table = _table(total=2, per_client=2)
    conns = [_Conn(f"10.0.0.{n}", float(n), busy=True) for n in range(2)]
    for conn in conns:
        assert table.admit(conn) is None
    reason = table.admit(_Conn("10.0.0.9", 9.0))
    assert reason is not None
    assert "busy" in reason
    assert not any(c.closed for c in conns)
    assert len(table) == 2
    assert table.stats.refused == 1


def test_an_address_at_its_bound_makes_room_among_its_own_connections_only() -> None:
    table = _table(total=10, per_client=2)
    other = _Conn("b", 0.0)  # the oldest idle of all, but another address's
    mine = [_Conn("a", 1.0), _Conn("a", 2.0)]
    for conn in (other, *mine):
        assert table.admit(conn) is None
    assert table.admit(_Conn("a", 3.0)) is None
    assert mine[0].closed
    assert not mine[1].closed
    assert not other.closed
    assert table.count("a") == 2
    assert table.count("b") == 1
    mine[1].busy = True
    table.admit(_Conn("a", 4.0))  # closes the 3.0 one, never the busy one
    assert not mine[1].closed
    assert table.count("a") == 2


def test_a_closed_connection_leaves_the_books() -> None:
    table = _table()
    conn = _Conn("a", 1.0)
    table.admit(conn)
    table.discard(conn)
    table.discard(conn)  # twice: an evicted connection's connection_lost comes later
    assert len(table) == 0
    assert table.count("a") == 0


def test_refusals_are_logged_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    table = _table(total=1, per_client=1)
    table.admit(_Conn("a", 0.0, busy=True))
    with caplog.at_level(logging.WARNING, logger="bbt.server.connections"):
        for n in range(50):  # a flood: one line, not fifty
            assert table.admit(_Conn("a", float(n))) is not None
    assert len(caplog.records) == 1
    assert table.stats.refused == 50


def test_the_refusal_is_a_complete_http_answer() -> None:
    raw = refusal_response("testing")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in head
    assert b"connection: close" in head
    assert f"content-length: {len(body)}".encode() in head
    assert json.loads(body)["error"]["type"] == "unavailable"


def test_an_unsupported_uvicorn_protocol_is_a_clear_error() -> None:
    # The guard marks a connection busy through the inner protocol's ``app`` attribute:
    # a uvicorn that renamed it must fail at the first connection, not serve unguarded.
    class NoApp(asyncio.Protocol):
        def __init__(self, **_: object) -> None:
            pass

    cls = guarded_protocol(ConnectionLimits(4, 2, 1.0))
    cls.inner_class = NoApp
    with pytest.raises(RuntimeError, match="not supported"):
        cls(config=None, server_state=None, app_state={}, _loop=None)
