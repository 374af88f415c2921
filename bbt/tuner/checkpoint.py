"""Authenticated checkpoints: only a checkpoint this user's machine wrote is ever unpickled.

The CMA-ES state is a pycma object, and pycma objects only pickle; unpickling runs whatever
code the bytes name. So a checkpoint is sealed with HMAC-SHA256 under a per-user secret key
that lives *outside* every run directory, and :func:`open_checkpoint` checks the tag with
:func:`hmac.compare_digest` before a single byte is unpickled. A run directory mailed from
elsewhere (or edited by someone else) fails the check and is refused; ``trust=True`` (CLI:
``--trust-checkpoint``) is the explicit opt-in for a checkpoint the user vouches for.

File format (``checkpoint.bin``)::

    MAGIC (8 bytes, b"BBTCKPT2")   tag (32 bytes)   payload (a pickle)

    tag = HMAC-SHA256(key, DOMAIN + run_id + b"\\0" + payload)

``run_id`` is the run's random id from its manifest, so a checkpoint cannot be swapped into
another run either. The key: ``$BBT_HOME/checkpoint.key`` when ``BBT_HOME`` is set, else
``$XDG_CONFIG_HOME/bbt/checkpoint.key`` (default ``~/.config/bbt/checkpoint.key``); 32 random
bytes, hex-encoded, created atomically with mode 0600 on first use. It never goes into a run
directory, a log or a message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import pickle
import secrets
from pathlib import Path
from typing import Any

from bbt.errors import RunError

log = logging.getLogger("bbt.tuner")

MAGIC = b"BBTCKPT2"
_DOMAIN = b"bbt-checkpoint/2\0"
_TAG_SIZE = hashlib.sha256().digest_size
_KEY_BYTES = 32
KEY_FILE = "checkpoint.key"
#: Environment variable naming bbt's per-user directory (holds the checkpoint key).
HOME_ENV = "BBT_HOME"
TRUST_HINT = "--trust-checkpoint (library: resume(..., trust_checkpoint=True))"


def key_path() -> Path:
    """Where this user's checkpoint key lives (see the module docstring)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / KEY_FILE
    xdg = os.environ.get("XDG_CONFIG_HOME")
    # The XDG spec says a relative XDG_CONFIG_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".config"
    return base / "bbt" / KEY_FILE


def _read_key(path: Path) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
        key = bytes.fromhex(text)
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "not a hex key"
        raise RunError(f"cannot read the checkpoint key {path}: {reason}") from None
    if len(key) < _KEY_BYTES:
        raise RunError(f"the checkpoint key {path} is too short; delete it to make a new one")
    try:
        if path.stat().st_mode & 0o077:
            log.warning("the checkpoint key %s is readable by other users; chmod 600 it", path)
    except OSError:  # pragma: no cover - it was just read
        pass
    return key


def load_key(create: bool = True) -> bytes:
    """This user's checkpoint key; with ``create``, made on first use.

    Creation is atomic and never clobbers: the key is written to a private temp file
    (mode 0600, fsync) and hard-linked into place, so two processes starting at once both end
    up with whichever key was linked first.
    """
    path = key_path()
    if path.exists() or not create:
        return _read_key(path)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{KEY_FILE}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, (secrets.token_hex(_KEY_BYTES) + "\n").encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: use theirs
        finally:
            tmp.unlink(missing_ok=True)
    except OSError as exc:
        raise RunError(
            f"cannot create the checkpoint key {path}: {exc.strerror or exc}; "
            f"set {HOME_ENV} to a private, writable directory"
        ) from None
    return _read_key(path)


def _tag(key: bytes, run_id: str, payload: bytes) -> bytes:
    return hmac.new(key, _DOMAIN + run_id.encode() + b"\0" + payload, hashlib.sha256).digest()


def seal(payload: bytes, run_id: str, key: bytes) -> bytes:
    """The bytes of a checkpoint file holding ``payload``."""
    return MAGIC + _tag(key, run_id, payload) + payload


def open_checkpoint(
    data: bytes, run_id: str, *, where: Path, trust: bool = False, key: bytes | None = None
) -> Any:
    """Verify and unpickle a sealed checkpoint. Nothing is unpickled unless its tag checks out
    under this user's key, or ``trust`` says the user vouches for the file."""
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _TAG_SIZE:
        reason = "it is not a bbt checkpoint"
        payload = None
    else:
        tag = data[len(MAGIC) : len(MAGIC) + _TAG_SIZE]
        payload = data[len(MAGIC) + _TAG_SIZE :]
        k = load_key() if key is None else key
        if hmac.compare_digest(tag, _tag(k, run_id, payload)):
            return pickle.loads(payload)
        reason = (
            "it was not written by bbt under this user's key "
            "(another user or machine wrote it, or it was edited)"
        )
    if not trust or payload is None:
        raise RunError(
            f"refusing to load the checkpoint {where}: {reason}, and loading it could run "
            f"code. Resume only a run you trust, with {TRUST_HINT}"
        )
    log.warning("loading the unauthenticated checkpoint %s because it is trusted explicitly", where)
    return pickle.loads(payload)


def open_legacy(data: bytes, *, where: Path, trust: bool) -> Any:
    """A ``checkpoint.pkl`` from before checkpoints were authenticated: refused unless trusted."""
    if not trust:
        raise RunError(
            f"refusing to load {where}: it is an unauthenticated pickle from an older bbt, and "
            f"loading it could run code. Resume only a run you trust, with {TRUST_HINT}"
        )
    log.warning("loading the legacy pickle checkpoint %s because it is trusted explicitly", where)
    return pickle.loads(data)
