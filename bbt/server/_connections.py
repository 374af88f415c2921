"""Connections that cannot starve the server: a request-head timeout and connection bounds.

uvicorn's ``limit_concurrency`` counts every open connection, idle or not, and answers a
bare 503 past it; uvicorn has no timeout before the first request line either. So 128
sockets that never sent a byte made the whole server answer 503 for as long as they stayed
open. The guard here wraps uvicorn's own HTTP protocol (``http=`` of ``uvicorn.Config``,
built by :meth:`bbt.server.settings.ServerSettings.uvicorn_options`) and changes three
things:

* **Request-head timeout.** A connection has ``header_timeout_s`` from its opening, or from
  its first byte after a keep-alive pause, to complete a request head; else it is closed.
  (uvicorn's keep-alive timer stops at the first byte, so a head begun and never finished
  would otherwise stay open for good.)
* **Idle connections make room.** At most ``max_connections`` connections are open, and at
  most ``max_per_client`` from one client address. Past either bound a new connection
  closes the least recently active *idle* one (no request in flight: a socket that never
  sent a head, or a keep-alive pause); a request in flight is never cut.
* **Refusal only when every connection is busy.** Then the new connection is answered a
  503 with Retry-After and the error envelope, and closed.

The bounds still cap the requests in flight (one per HTTP/1.1 connection), so the memory
that buffered bodies may take stays bounded as it was; the body itself has its own deadline
in the app (``body_timeout_s``, :class:`bbt.server.app._Guard`).

A request is "in flight" from the moment uvicorn calls the app until the app returns. The
guard sees that by wrapping the inner protocol's ``app`` attribute, which both of uvicorn's
HTTP/1.1 implementations read per request; :func:`guarded_protocol` fails loudly if that
attribute is missing, and tests/server/test_connections.py catches a behaviour change.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast

from bbt.protocol import ErrorType, wire_json
from bbt.server._failures import APIFailure, new_request_id, protocol_headers

logger = logging.getLogger("bbt.server.connections")

ASGIApp = Callable[
    [MutableMapping[str, Any], Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
    Awaitable[None],
]

#: Retry-After of a refused connection: every connection was busy, and busy ones end with
#: their request (a body that stalls ends at ``body_timeout_s``).
REFUSED_RETRY_AFTER_S = 1
#: Refusals are logged at most this often (with a count), so a flood cannot fill the log.
REFUSAL_LOG_INTERVAL_S = 10.0


@dataclass(frozen=True)
class ConnectionLimits:
    """The guard's bounds (from :class:`~bbt.server.settings.ServerSettings`)."""

    max_connections: int
    max_per_client: int
    header_timeout_s: float


@dataclass
class ConnectionStats:
    """What the guard did (``table.stats`` of the protocol class)."""

    #: New connections answered 503 and closed: every connection in their bound was busy.
    refused: int = 0
    #: Idle connections closed to make room for a new one.
    evicted: int = 0
    #: Connections closed because their request head did not arrive in time.
    head_timeouts: int = 0


class Tracked(Protocol):
    """What the table needs of a connection."""

    client: str
    last_active: float

    @property
    def idle(self) -> bool: ...

    def close(self) -> None: ...


@dataclass
class ConnectionTable:
    """The open connections of one server, in total and by client address.

    Used from the event loop only (uvicorn runs one), so it needs no lock.
    """

    limits: ConnectionLimits
    stats: ConnectionStats = field(default_factory=ConnectionStats)
    _open: dict[Tracked, None] = field(default_factory=dict)
    _by_client: dict[str, dict[Tracked, None]] = field(default_factory=dict)
    _last_refusal_log: float = -REFUSAL_LOG_INTERVAL_S
    _unlogged_refusals: int = 0

    def __len__(self) -> int:
        return len(self._open)

    def count(self, client: str) -> int:
        return len(self._by_client.get(client, ()))

    def admit(self, conn: Tracked) -> str | None:
        """Record ``conn``, first closing an idle connection where a bound is reached.

        None when admitted; else why not (the connection is not recorded).
        """
        peers = self._by_client.get(conn.client, {})
        if len(peers) >= self.limits.max_per_client and not self._evict(peers):
            return self._refuse(conn, f"{len(peers)} connections from your address are all busy")
        if len(self._open) >= self.limits.max_connections and not self._evict(self._open):
            return self._refuse(conn, "all the server's connections are busy")
        self._open[conn] = None
        self._by_client.setdefault(conn.client, {})[conn] = None
        return None

    def discard(self, conn: Tracked) -> None:
        """Forget ``conn`` (closed, or about to be); harmless when already forgotten."""
        self._open.pop(conn, None)
        peers = self._by_client.get(conn.client)
        if peers is not None:
            peers.pop(conn, None)
            if not peers:
                del self._by_client[conn.client]

    def _evict(self, pool: dict[Tracked, None]) -> bool:
        """Close the least recently active idle connection of ``pool``; False if none."""
        victim = min((c for c in pool if c.idle), key=lambda c: c.last_active, default=None)
        if victim is None:
            return False
        self.discard(victim)  # now: its connection_lost comes on a later loop turn
        victim.close()
        self.stats.evicted += 1
        logger.debug("closed an idle connection from %s to make room", victim.client)
        return True

    def _refuse(self, conn: Tracked, reason: str) -> str:
        self.stats.refused += 1
        self._unlogged_refusals += 1
        now = time.monotonic()
        if now - self._last_refusal_log >= REFUSAL_LOG_INTERVAL_S:
            logger.warning(
                "refused %d connection(s) (latest from %s): %s; answering 503, Retry-After %ds",
                self._unlogged_refusals,
                conn.client,
                reason,
                REFUSED_RETRY_AFTER_S,
            )
            self._last_refusal_log = now
            self._unlogged_refusals = 0
        return reason


def refusal_response(reason: str) -> bytes:
    """The whole HTTP answer to a refused connection: 503, Retry-After, the error envelope."""
    fail = APIFailure(
        503,
        ErrorType.unavailable,
        f"too many connections: {reason}; retry after {REFUSED_RETRY_AFTER_S}s",
    )
    body = wire_json(fail.envelope)
    headers = {
        "content-type": "application/json",
        "content-length": str(len(body)),
        "retry-after": str(REFUSED_RETRY_AFTER_S),
        "connection": "close",
        **protocol_headers(new_request_id(None)),
    }
    head = "HTTP/1.1 503 Service Unavailable\r\n" + "".join(
        f"{k}: {v}\r\n" for k, v in headers.items()
    )
    return (head + "\r\n").encode("latin-1") + body


class GuardedProtocol(asyncio.Protocol):
    """uvicorn's HTTP protocol for one connection, behind the head timeout and the bounds.

    Subclassed per server by :func:`guarded_protocol`, which sets the class attributes.
    """

    limits: ClassVar[ConnectionLimits]
    table: ClassVar[ConnectionTable]
    inner_class: ClassVar[type[asyncio.Protocol]]

    def __init__(
        self,
        config: Any,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        # uvicorn builds every HTTP protocol with these keyword arguments (Server.serve).
        self._inner: Any = cast(
            Any,
            self.inner_class(  # type: ignore[call-arg]
                config=config, server_state=server_state, app_state=app_state, _loop=_loop
            ),
        )
        app = getattr(self._inner, "app", None)
        if app is None:
            raise RuntimeError(
                f"{self.inner_class.__name__} has no 'app' attribute: this uvicorn version "
                "is not supported by bbt's connection guard"
            )
        self._inner.app = self._tracked(app)
        self._loop = _loop or asyncio.get_running_loop()
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._refused = False
        self.client = "unknown"
        self.busy = 0
        self.last_active = time.monotonic()

    @property
    def idle(self) -> bool:
        """No request in flight: closing it loses no work."""
        return self.busy == 0

    def close(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        peer = transport.get_extra_info("peername")
        # A Unix socket has no address: all its clients share one bound.
        self.client = str(peer[0]) if isinstance(peer, tuple | list) and peer else "local"
        reason = self.table.admit(self)
        if reason is not None:
            self._refused = True
            cast(asyncio.WriteTransport, transport).write(refusal_response(reason))
            transport.close()
            return
        self._inner.connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # answered already; the transport is closing
        self.last_active = time.monotonic()
        if self.busy == 0 and self._timer is None:
            # The first byte of a head after a keep-alive pause: uvicorn's keep-alive timer
            # stops here, the head timeout starts.
            self._arm_head_timer()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._refused:
            return None
        return cast(bool | None, self._inner.eof_received())

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        self.table.discard(self)
        if not self._refused:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if not self._refused:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if not self._refused:
            self._inner.resume_writing()

    # ------------------------------------------------------------------ internals

    def _tracked(self, app: ASGIApp) -> ASGIApp:
        """``app`` for this connection's requests, marking the connection busy meanwhile."""

        async def tracked(scope: Any, receive: Any, send: Any) -> None:
            self.busy += 1
            self._disarm_head_timer()  # the head is complete
            try:
                await app(scope, receive, send)
            finally:
                self.busy -= 1
                self.last_active = time.monotonic()

        return tracked

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._timer = self._loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self.busy or self._transport is None or self._transport.is_closing():
            return
        self.table.stats.head_timeouts += 1
        logger.debug(
            "closed a connection from %s: no complete request head within %gs",
            self.client,
            self.limits.header_timeout_s,
        )
        self.close()


def guarded_protocol(limits: ConnectionLimits) -> type[GuardedProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)``: uvicorn's default HTTP/1.1
    protocol behind ``limits``, with one connection table for the server that uses it."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return type(
        "BBTGuardedProtocol",
        (GuardedProtocol,),
        {"limits": limits, "table": ConnectionTable(limits), "inner_class": AutoHTTPProtocol},
    )


__all__ = [
    "ConnectionLimits",
    "ConnectionStats",
    "ConnectionTable",
    "GuardedProtocol",
    "guarded_protocol",
    "refusal_response",
]
