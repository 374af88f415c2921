"""Every file operation inside a run directory: no link is followed, nothing blocks.

Run directories travel like any artifact: they are shared, downloaded and unpacked from
archives. A crafted one could hold ``history.jsonl -> ~/.bashrc``, and a plain ``open()``
would then make ``bbt tune --resume`` truncate and append to the link's target (issue 18).
So bbt opens files in a run directory only through this module:

* :func:`check_run_dir` is the gate before an existing run directory is used (every reader
  starts with ``read_manifest``, and a new run's ``_prepare_dir`` calls it too): a directory
  with a symbolic link, a FIFO, a socket or a device among its entries is refused whole, with
  one line naming the entry, before anything is read or written. So is one where a file bbt
  writes *in place* (:data:`IN_PLACE`: appended to or truncated, not replaced) has a second
  hard link, since writing it would write the other name's file too.
* :func:`open_fd` and :func:`open_file` open with ``O_NOFOLLOW`` (a link at the last
  component fails instead of being followed), ``O_NONBLOCK`` (a FIFO cannot block the
  open) and ``O_CLOEXEC``, then ``fstat`` the descriptor: a regular file only, and a
  single link for in-place writes. This repeats the gate's checks on the very file that was
  opened, so an entry swapped in after the gate is caught too.
* :func:`atomic_write` replaces a file: a temp file made by ``mkstemp`` (``O_EXCL`` and,
  where the platform has it, ``O_NOFOLLOW``) in the same directory, fsync, ``os.replace``
  (which replaces a link rather than writing through it), fsync of the directory. A crash
  leaves the old file or the new one, never a mix, and never a write elsewhere.

The run directory itself may be a link (``make demo`` points ``runs/demo-agnews`` at the
latest run): the user chose that path. Only what is *inside* it is distrusted, and bbt never
uses a path more than one level below a run directory, so the last component of every path
opened here is the only one inside it.

Windows has no ``O_NOFOLLOW`` (nor FIFOs): there the entry is ``lstat``-ed just before the
open instead, which leaves a race a local attacker could win, but refuses a link that came
with the directory.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from bbt.errors import RunError, UnsafeRunDirError

_NOFOLLOW: int = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC: int = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK: int = getattr(os, "O_NONBLOCK", 0)
_BINARY: int = getattr(os, "O_BINARY", 0)  # Windows: no newline translation

#: Files bbt writes in place (appends to, truncates) instead of replacing them: the lock,
#: the per-generation history and the internal-error log. A second hard link to one of these
#: would be written through, so they must have exactly one.
IN_PLACE = frozenset({"run.lock", "history.jsonl", "error.log"})

Mode = Literal["rb", "ab", "r+b"]
_FLAGS: dict[str, int] = {
    "rb": os.O_RDONLY,
    "ab": os.O_WRONLY | os.O_APPEND | os.O_CREAT,
    "r+b": os.O_RDWR,
}


def _what(st: os.stat_result, name: str, *, dir_ok: bool) -> str | None:
    """Why an entry with this stat may not be used; ``None`` when it may."""
    mode = st.st_mode
    if stat.S_ISREG(mode):
        if name in IN_PLACE and st.st_nlink > 1:
            return f"a file with {st.st_nlink} hard links, which bbt would write through"
        return None
    if stat.S_ISDIR(mode):
        return None if dir_ok else "a directory"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def _refusal(run_dir: Path, name: str, what: str) -> UnsafeRunDirError:
    return UnsafeRunDirError(
        f"refusing the run directory {run_dir}: {name} is {what}; a run directory must hold "
        "only regular files (a shared one could make bbt write outside it). Replace the "
        "entry with a plain copy, or use another directory"
    )


def check_run_dir(run_dir: Path) -> None:
    """Refuse ``run_dir`` (:class:`UnsafeRunDirError`) when one of its entries is a link,
    a FIFO, a socket or a device, or an in-place file has more than one hard link.

    Subdirectories are allowed and not looked into: bbt never opens anything in them.
    """
    try:
        with os.scandir(run_dir) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as exc:
        raise RunError(f"cannot read run directory {run_dir}: {exc.strerror or exc}") from None
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:  # removed since the listing
            continue
        except OSError as exc:
            raise RunError(f"cannot read {run_dir / entry.name}: {exc.strerror or exc}") from None
        what = _what(st, entry.name, dir_ok=True)
        if what is not None:
            raise _refusal(run_dir, entry.name, what)


def _check_entry(path: Path) -> None:
    """Refuse ``path`` when what is there now may not be opened; nothing there is fine."""
    try:
        st = os.lstat(path)
    except OSError:
        return
    what = _what(st, path.name, dir_ok=False)
    if what is not None:
        raise _refusal(path.parent, path.name, what)


def open_fd(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open(path, flags)`` for a file directly inside a run directory, never through a
    link, never blocking on a FIFO; the descriptor is checked to be a regular file (with a
    single link, for :data:`IN_PLACE` files). Raises :class:`UnsafeRunDirError` for what is
    refused, :class:`OSError` as ``os.open`` does otherwise."""
    if not _NOFOLLOW:  # pragma: no cover - Windows: check just before, as well as we can
        _check_entry(path)
    try:
        fd = os.open(path, flags | _NOFOLLOW | _CLOEXEC | _NONBLOCK | _BINARY, mode)
    except OSError:
        # A link fails with ELOOP (Linux, macOS) or EMLINK (FreeBSD), a FIFO opened for
        # writing with no reader with ENXIO: name the entry rather than the errno.
        _check_entry(path)
        raise
    try:
        what = _what(os.fstat(fd), path.name, dir_ok=False)
        if what is not None:
            raise _refusal(path.parent, path.name, what)
        if _NONBLOCK:
            os.set_blocking(fd, True)  # only there so that a FIFO could not block the open
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_file(path: Path, mode: Mode) -> BinaryIO:
    """A binary file object on ``path`` (see :func:`open_fd`): ``rb`` reads, ``ab`` appends
    (creating the file), ``r+b`` reads and writes an existing file."""
    fd = open_fd(path, _FLAGS[mode])
    try:
        return os.fdopen(fd, mode)
    except BaseException:  # pragma: no cover - fdopen of a fresh descriptor
        os.close(fd)
        raise


def read_bytes(path: Path) -> bytes:
    """The bytes of a file in a run directory (see :func:`open_fd`)."""
    with open_file(path, "rb") as fh:
        return fh.read()


def read_text(path: Path) -> str:
    """The UTF-8 text of a file in a run directory (see :func:`open_fd`)."""
    return read_bytes(path).decode("utf-8")


def load_npy(path: Path) -> np.ndarray[Any, Any]:
    """An ``.npy`` array from a run directory, never unpickled (see :func:`open_fd`)."""
    with open_file(path, "rb") as fh:
        array: np.ndarray[Any, Any] = np.load(fh, allow_pickle=False)
    return array


def save_npy(path: Path, array: np.ndarray[Any, Any]) -> None:
    """Write ``array`` as ``.npy`` with :func:`atomic_write`."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    atomic_write(path, buf.getvalue())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def _write_temp(path: Path, data: bytes) -> str:
    """A complete, fsynced temp file next to ``path``, named ``.NAME.*.tmp`` (the pattern a
    resume sweeps up after a crash). ``mkstemp`` opens with ``O_EXCL`` and ``O_NOFOLLOW``."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return tmp


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` so that ``path`` holds either the old or the new content, never a mix:
    a temp file in the same directory, fsync, ``os.replace``, then fsync of the directory.
    A link at ``path`` is replaced, never written through."""
    tmp = _write_temp(path, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def exclusive_create(path: Path, data: bytes) -> None:
    """Like :func:`atomic_write`, but fail with :class:`FileExistsError` when ``path`` exists
    (a dangling link included): the complete file is hard-linked into place, which no other
    writer can race."""
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _fsync_dir(path.parent)


__all__ = [
    "IN_PLACE",
    "atomic_write",
    "check_run_dir",
    "exclusive_create",
    "load_npy",
    "open_fd",
    "open_file",
    "read_bytes",
    "read_text",
    "save_npy",
]
