"""A real uvicorn server on a loopback port, in a background thread, for end-to-end tests."""

from __future__ import annotations

import socket
import threading
import time
from types import TracebackType
from typing import Any

from bbt.errors import ConfigurationError
from bbt.server.backend import Backend
from bbt.server.faults import FaultConfig
from bbt.server.settings import ServerSettings

_START_TIMEOUT_S = 10.0


class LiveServer:
    """Serve an ASGI app with uvicorn on ``127.0.0.1:<free port>`` until :meth:`stop`.

    The socket is bound here, before the thread starts, so :attr:`base_url` is valid at
    once and two servers can never race for a port. Use as a context manager.
    ``uvicorn_options`` (e.g. ``ServerSettings.uvicorn_options()``: the connection guard and
    keep-alive ``bbt serve`` runs with) go to ``uvicorn.Config``.
    """

    def __init__(
        self,
        app: Any,
        host: str = "127.0.0.1",
        graceful_timeout_s: int = 2,
        uvicorn_options: dict[str, Any] | None = None,
    ) -> None:
        try:
            import uvicorn
        except ImportError as exc:
            raise ConfigurationError(
                "a live server needs uvicorn: pip install 'bbt[server]'"
            ) from exc
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.host = host
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            log_config=None,  # leave logging to the host application (and pytest's caplog)
            access_log=False,  # the app writes its own access log
            lifespan="off",
            # Injected slow responses must not hold shutdown for their whole sleep.
            timeout_graceful_shutdown=graceful_timeout_s,
            **(uvicorn_options or {}),
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> LiveServer:
        self._thread.start()
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the live server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=_START_TIMEOUT_S)
        self._sock.close()

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def live_server(
    backend: Backend,
    *,
    settings: ServerSettings | None = None,
    faults: FaultConfig | None = None,
) -> LiveServer:
    """A (not yet started) :class:`LiveServer` for ``create_app(backend, settings, faults)``.

    ``settings`` defaults to no API keys rather than the environment's ``BBT_SERVER_*``.
    The server runs with the settings' connection limits and timeouts, as ``bbt serve`` does.
    """
    from bbt.server.app import create_app  # needs the server extra; raises a clear error

    settings = settings if settings is not None else ServerSettings(api_keys=[])
    app = create_app(backend, settings, faults)
    return LiveServer(app, uvicorn_options=settings.uvicorn_options())
