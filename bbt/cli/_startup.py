"""What ``bbt serve`` and ``bbt mock-server`` both do to start: check ``--log-level``, set up
logging, say how clients authenticate, and run the app under uvicorn on a bound socket."""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

from bbt.cli._common import fail


def log_level(name: str) -> int:
    """``--log-level`` as a :mod:`logging` level; anything else fails in one line."""
    level = getattr(logging, name.upper(), None)
    if not isinstance(level, int):
        fail(f"--log-level must be debug, info or warning, not {name!r}")
    return level


def start_logging(level: int) -> None:
    """The servers' log lines on stderr, with time, level and logger."""
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )


def auth_summary(settings: Any, without: str) -> str:
    """How many API keys guard the server (never the keys), or ``without`` when none."""
    return f"{len(settings.api_keys)} API key(s)" if settings.api_keys else without


def run_uvicorn(
    app: Any,
    sock: socket.socket,
    settings: Any,
    log_level: str,
    *,
    cleanup: Callable[[], None],
    **config: Any,
) -> None:
    """Serve ``app`` on ``sock`` until stopped, then ``cleanup()``. The app logs one line per
    request itself (no access log); ``settings`` (a ServerSettings) gives the connection
    limit and keep-alive; ``config``: the command's own ``uvicorn.Config`` options."""
    import uvicorn

    server_config = uvicorn.Config(
        app,
        log_level=log_level.lower(),
        access_log=False,
        **config,
        **settings.uvicorn_options(),
    )
    try:
        uvicorn.Server(server_config).run(sockets=[sock])
    finally:
        cleanup()
