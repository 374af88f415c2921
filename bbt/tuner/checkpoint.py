"""Checkpoints: explicit data (JSON + arrays in an ``.npz``), authenticated, no pickle.

A checkpoint is what :mod:`bbt.tuner.run` writes after every generation: the tuner's state
dict (counters, candidates, the optimiser's :meth:`~bbt.tuner.optimizers.Optimizer.
state_dict`), the history offset and the usage so far. :func:`encode_payload` writes it as
one ``.npz`` archive (``numpy.savez``, never an object array) holding a JSON document whose
arrays are stored beside it and referred to by name; :func:`decode_payload` reads it with
``allow_pickle=False``. Loading a checkpoint runs no code from the file.

File format 3 (``checkpoint.bin``)::

    MAGIC (8 bytes, b"BBTCKPT3")   tag (32 bytes)   payload (the .npz archive)

    tag = HMAC-SHA256(key, DOMAIN + run_id + b"\\0" + payload)

The HMAC stays although the payload can no longer run code: a checkpoint steers the rest of
the run (its RNG stream, its selection), so a file edited by someone else or swapped in from
another run (the run id is in the tag) is still refused rather than silently continued.
``trust=True`` (CLI: ``--trust-checkpoint``) loads a checkpoint another user or machine
wrote; for format 3 that is safe (data only) and only logged. The key:
``$BBT_HOME/checkpoint.key`` when ``BBT_HOME`` is set, else
``$XDG_CONFIG_HOME/bbt/checkpoint.key`` (default ``~/.config/bbt/checkpoint.key``); 32 random
bytes, hex-encoded, created atomically with mode 0600 on first use. It never goes into a run
directory, a log or a message.

The legacy reader (:mod:`bbt.tuner._legacy`) is the one place that loads a pickle: format 2
(``BBTCKPT2``, bbt up to f05a715: the same header around a pickle) when its HMAC verifies
under this user's key or it is trusted, and the unauthenticated ``checkpoint.pkl`` of older
bbt only when trusted. Either is converted on reading to the format-3 contents, and the
run's next checkpoint is written in format 3.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import secrets
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from bbt.errors import RunError
from bbt.tuner._legacy import convert_legacy, unpickle_legacy

log = logging.getLogger("bbt.tuner")

MAGIC = b"BBTCKPT3"
_DOMAIN = b"bbt-checkpoint/3\0"
#: Format 2 (bbt up to f05a715): the same header around a pickle; read by the legacy reader.
LEGACY_MAGIC = b"BBTCKPT2"
_LEGACY_DOMAIN = b"bbt-checkpoint/2\0"
#: The JSON document's entry in the payload archive; arrays are ``a0``, ``a1``, ...
_DOC = "checkpoint.json"
_ARRAY_REF = "__ndarray__"
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


def _tag(key: bytes, run_id: str, payload: bytes, domain: bytes = _DOMAIN) -> bytes:
    return hmac.new(key, domain + run_id.encode() + b"\0" + payload, hashlib.sha256).digest()


def seal(payload: bytes, run_id: str, key: bytes) -> bytes:
    """The bytes of a checkpoint file holding ``payload``."""
    return MAGIC + _tag(key, run_id, payload) + payload


# --------------------------------------------------------------------------- payload


def _flatten(value: Any, arrays: dict[str, np.ndarray[Any, Any]]) -> Any:
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise ValueError("a checkpoint holds no object arrays")
        name = f"a{len(arrays)}"
        arrays[name] = value
        return {_ARRAY_REF: name}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value) or _ARRAY_REF in value:
            raise ValueError("checkpoint mappings have string keys")
        return {k: _flatten(v, arrays) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_flatten(v, arrays) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValueError(f"a checkpoint holds data only, not {type(value).__name__}")


def _unflatten(value: Any, arrays: dict[str, np.ndarray[Any, Any]]) -> Any:
    if isinstance(value, dict):
        if set(value) == {_ARRAY_REF}:
            return arrays[value[_ARRAY_REF]]
        return {k: _unflatten(v, arrays) for k, v in value.items()}
    if isinstance(value, list):
        return [_unflatten(v, arrays) for v in value]
    return value


def encode_payload(data: dict[str, Any]) -> bytes:
    """``data`` (JSON-able values and NumPy arrays, nested) as one ``.npz`` archive."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    doc = json.dumps(_flatten(data, arrays), separators=(",", ":")).encode()
    buf = io.BytesIO()
    entries: dict[str, Any] = {_DOC: np.frombuffer(doc, dtype=np.uint8), **arrays}
    np.savez(buf, **entries)  # no object arrays (refused above): nothing is pickled
    return buf.getvalue()


def decode_payload(payload: bytes) -> dict[str, Any]:
    """What :func:`encode_payload` wrote; arrays are loaded with ``allow_pickle=False``."""
    try:
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"damaged checkpoint payload: {exc}") from None
    doc = arrays.pop(_DOC, None)
    if doc is None:
        raise ValueError("damaged checkpoint payload: no JSON document")
    data = _unflatten(json.loads(doc.tobytes()), arrays)
    if not isinstance(data, dict):
        raise ValueError("damaged checkpoint payload: not a mapping")
    return data


def open_checkpoint(
    data: bytes, run_id: str, *, where: Path, trust: bool = False, key: bytes | None = None
) -> dict[str, Any]:
    """Verify and read a checkpoint file: format 3, or format 2 through the legacy reader
    (converted). Nothing is read unless its tag checks out under this user's key, or
    ``trust`` says the user vouches for the file."""
    head = data[: len(MAGIC)]
    if head not in (MAGIC, LEGACY_MAGIC) or len(data) < len(MAGIC) + _TAG_SIZE:
        raise RunError(
            f"refusing to load the checkpoint {where}: it is not a bbt checkpoint. "
            f"Resume only a run you trust, with {TRUST_HINT}"
        )
    legacy = head == LEGACY_MAGIC
    tag = data[len(MAGIC) : len(MAGIC) + _TAG_SIZE]
    payload = data[len(MAGIC) + _TAG_SIZE :]
    k = load_key() if key is None else key
    domain = _LEGACY_DOMAIN if legacy else _DOMAIN
    if not hmac.compare_digest(tag, _tag(k, run_id, payload, domain)):
        reason = (
            "it was not written by bbt under this user's key "
            "(another user or machine wrote it, or it was edited)"
        )
        if not trust:
            danger = ", and loading it could run code" if legacy else ""
            raise RunError(
                f"refusing to load the checkpoint {where}: {reason}{danger}. "
                f"Resume only a run you trust, with {TRUST_HINT}"
            )
        log.warning(
            "loading the unauthenticated checkpoint %s because it is trusted explicitly", where
        )
    if legacy:
        return convert_legacy(unpickle_legacy(payload))
    return decode_payload(payload)


def open_legacy(data: bytes, *, where: Path, trust: bool) -> dict[str, Any]:
    """A ``checkpoint.pkl`` from before checkpoints were authenticated: refused unless
    trusted; converted to the format-3 contents."""
    if not trust:
        raise RunError(
            f"refusing to load {where}: it is an unauthenticated pickle from an older bbt, and "
            f"loading it could run code. Resume only a run you trust, with {TRUST_HINT}"
        )
    log.warning("loading the legacy pickle checkpoint %s because it is trusted explicitly", where)
    return convert_legacy(unpickle_legacy(data))
