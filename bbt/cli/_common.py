"""What the command modules share: one-line failures and binding a listening socket early."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer

from bbt.errors import BBTError

EXIT_ERROR = 2
EXIT_PORT_IN_USE = 3


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``: no traceback for users."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def describe_invalid(exc: ValueError) -> str:
    """A settings error in one line: pydantic's messages (with where), never the input
    values (they may be keys)."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        return "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}".lstrip(": ")
            for e in errors()
        )
    return str(exc)


@contextmanager
def one_line_errors(
    needs: str | None = None,
    *,
    invalid: str | None = None,
    also: tuple[type[Exception], ...] = (),
    cleanup: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Fail the command (:func:`fail`) with one line for what the block raises: a bbt error
    (or one of ``also``) its message; with ``needs``, a missing import
    ``needs.format(name=<module>)``; with ``invalid``, a ``ValueError`` (pydantic's)
    ``"<invalid>: <messages>"``. ``cleanup`` runs first (close what the command opened)."""
    caught: tuple[type[Exception], ...] = (BBTError, *also)
    try:
        yield
    except ImportError as exc:
        if needs is None:
            raise
        message = needs.format(name=exc.name or "a module it imports")
    except caught as exc:
        message = str(exc)
    except ValueError as exc:
        if invalid is None:
            raise
        message = f"{invalid}: {describe_invalid(exc)}"
    else:
        return
    if cleanup is not None:
        cleanup()
    fail(message)


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
