"""What the command modules share: one-line failures and binding a listening socket early."""

from __future__ import annotations

import errno
import socket
from typing import NoReturn

import typer

EXIT_ERROR = 2
EXIT_PORT_IN_USE = 3


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``: no traceback for users."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def bind_listener(host: str, port: int) -> socket.socket:
    """Bind before starting uvicorn (or loading a model), so a busy port fails at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        fail(f"cannot resolve host {host!r}: {exc.strerror}")
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            fail(f"port {port} on {host} is already in use (try --port 0)", EXIT_PORT_IN_USE)
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
    return sock
