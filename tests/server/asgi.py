"""Drive the app as a server would: raw ASGI calls whose client can leave, and real uvicorn."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import uvicorn

from bbt.server.settings import ServerSettings


class RawCall:
    """One POST through the app's ASGI interface, with a client that may disconnect.

    ``receive`` behaves like uvicorn's: the body once, then it blocks until the client
    leaves (:meth:`leave`) or the response is complete, and then says ``http.disconnect``.
    """

    def __init__(self, app: Any, path: str, payload: dict[str, Any]) -> None:
        self.app = app
        self.path = path
        self.body = json.dumps(payload).encode()
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.response = b""
        self.finished = False
        self._sent_body = False
        self._closed = anyio.Event()

    def leave(self) -> None:
        """The client closes its connection (a timeout, a killed process)."""
        self._closed.set()

    async def _receive(self) -> dict[str, Any]:
        if not self._sent_body:
            self._sent_body = True
            return {"type": "http.request", "body": self.body, "more_body": False}
        await self._closed.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = {k.decode().lower(): v.decode() for k, v in message.get("headers", [])}
        elif message["type"] == "http.response.body":
            self.response += message.get("body", b"")
            if not message.get("more_body", False):
                self._closed.set()

    async def run(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": self.path,
            "raw_path": self.path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(self.body)).encode()),
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("testserver", 80),
        }
        try:
            await self.app(scope, self._receive, self._send)
        finally:
            self.finished = True


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``condition`` from async code until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await anyio.sleep(0.005)


def wait_for_sync(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.005)


@contextmanager
def uvicorn_server(app: Any, settings: ServerSettings) -> Iterator[str]:
    """Serve ``app`` with uvicorn (the settings' limits) on a free loopback port; yield its URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", **settings.uvicorn_options()
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        wait_for_sync(lambda: bool(server.started))
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
