"""Cooperative cancellation of backend work whose client has gone away.

A backend call runs in a worker thread, and Python cannot stop a thread from outside. So the
app hands each call a cheap ``should_stop`` check (it reads a flag that the app sets when the
client disconnects), and a backend with a long loop polls it between units of work (the
Hugging Face backend between forward chunks, the mock between slices of its simulated
compute) and raises :class:`Cancelled`.

The check travels in a :class:`~contextvars.ContextVar`, so the :class:`~bbt.server.backend.Backend`
signatures stay as they are: a backend that never polls simply runs to the end. Nothing here
imports FastAPI or anyio: in-process users (``bbt.testing``) never set a check.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

StopCheck = Callable[[], bool]

_current: ContextVar[StopCheck | None] = ContextVar("bbt_server_should_stop", default=None)


class Cancelled(Exception):  # noqa: N818 - an outcome, like asyncio's CancelledError
    """The backend stopped early because the request's client went away."""


@contextmanager
def stop_when(check: StopCheck | None) -> Iterator[None]:
    """Make ``check`` the current stop check for backend calls made inside the block."""
    token = _current.set(check)
    try:
        yield
    finally:
        _current.reset(token)


def current_stop_check() -> StopCheck | None:
    """The stop check set by :func:`stop_when` in this context, or None."""
    return _current.get()


def raise_if_stopped(check: StopCheck | None, what: str = "request") -> None:
    """Raise :class:`Cancelled` when ``check`` says the client has gone."""
    if check is not None and check():
        raise Cancelled(f"{what} cancelled: the client disconnected")


__all__ = ["Cancelled", "StopCheck", "current_stop_check", "raise_if_stopped", "stop_when"]
