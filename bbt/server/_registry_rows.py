"""The prompt registry's tables, records, refusals and row decoding (see
:mod:`bbt.server.registry`, which does the SQLite work and re-exports the public names).

The table layout and the SQL that reads it, the :class:`PromptRecord` of a row (read so that
a damaged row can still be listed and deleted), the refusals the server maps to 4xx
answers, and which storage faults are worth a retry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import secrets
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bbt.protocol.registry import MAX_JSON_DEPTH, check_json_value, check_text
from bbt.protocol.validate import ProtocolViolation

log = logging.getLogger("bbt.server")

#: Prefix of every prompt id: tells an id from other strings in logs and run directories.
ID_PREFIX = "bp_"
#: Random bytes in an id (URL-safe base64 of 24 bytes: 32 characters, 192 bits).
_ID_BYTES = 24

DEFAULT_MAX_PROMPTS = 1000
DEFAULT_MAX_BYTES = 256 * 2**20
DEFAULT_MAX_TOTAL_BYTES = 4 * 2**30

_F32 = np.dtype("<f4")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS prompts (
    id         TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    model      TEXT NOT NULL,
    kind       TEXT NOT NULL,
    shape      TEXT NOT NULL,
    nbytes     INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    recipe     TEXT NOT NULL,
    label      TEXT,
    created_at REAL NOT NULL,
    payload    BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS prompts_by_content ON prompts (tenant, model, sha256);
CREATE INDEX IF NOT EXISTS prompts_by_time ON prompts (tenant, created_at, id);
"""
#: Bytes a row counts against the bounds, for rows whose ``stored_bytes`` is empty: the
#: payload, plus the recipe unless it is the empty one, plus the label. ASCII-escaped JSON
#: (what put() writes) has as many bytes as characters.
_STORED_BYTES_SQL = (
    "nbytes + CASE WHEN recipe = '{}' THEN 0 ELSE length(CAST(recipe AS BLOB)) END"
    " + COALESCE(length(CAST(label AS BLOB)), 0)"
)
#: Usage of a set of rows; an older bbt's rows (stored_bytes NULL) count their payload.
_USAGE_SQL = "SELECT COUNT(*), COALESCE(SUM(COALESCE(stored_bytes, nbytes)), 0) FROM prompts"
#: Metadata columns of a row, every text one as raw bytes: a column holding bytes that are
#: not UTF-8 must make that row damaged, not fail the whole query.
_ROW_COLUMNS = (
    "CAST(id AS BLOB), CAST(model AS BLOB), CAST(kind AS BLOB), CAST(shape AS BLOB), nbytes, "
    "CAST(sha256 AS BLOB), CAST(recipe AS BLOB), CAST(label AS BLOB), created_at, "
    "COALESCE(stored_bytes, nbytes)"
)


#: SQLite result codes (the low byte of an extended code) that mean the storage, not the
#: request, failed; with what to tell the client. See https://sqlite.org/rescode.html.
_FAULTS: dict[int, str] = {
    5: "is busy (another process holds its lock); try again shortly",  # SQLITE_BUSY
    6: "is busy (a table is locked); try again shortly",  # SQLITE_LOCKED
    8: "is read-only on the server, so nothing can be stored or deleted now",  # READONLY
    10: "hit a disk I/O error on the server",  # SQLITE_IOERR
    11: "file is damaged on the server",  # SQLITE_CORRUPT
    13: "cannot grow: the server's disk is full",  # SQLITE_FULL
    14: "file cannot be opened on the server",  # SQLITE_CANTOPEN
    26: "file is damaged on the server",  # SQLITE_NOTADB
}
#: The same, by the message SQLite gives (an error raised without a code, as tests do).
_FAULT_TEXT = {
    "database is locked": 5,
    "database table is locked": 6,
    "readonly database": 8,
    "disk i/o error": 10,
    "malformed": 11,
    "disk is full": 13,
    "unable to open database": 14,
    "not a database": 26,
}


class RegistryError(Exception):
    """Base class of the store's refusals (mapped to 4xx answers by the server)."""


class RegistryFull(RegistryError):  # noqa: N818 - a refusal, not a crash
    """Storing would pass a bound: the tenant's count or bytes, or the whole file's bytes."""


class DamagedPrompt(RegistryError):  # noqa: N818
    """A stored row whose payload does not match its shape or digest, or whose metadata
    cannot be read back."""


class RegistryUnavailable(RegistryError):  # noqa: N818 - a refusal, not a crash
    """The storage failed (see *Faults* in the module docstring); ``retry_after`` is set
    (seconds) when waiting should help, as for a lock held by another process."""

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def storage_fault(exc: sqlite3.Error) -> RegistryUnavailable | None:
    """The refusal a storage fault maps to; None for an error that is a bug (a constraint,
    a closed connection), which must stay a 500 and reach the log as one."""
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return None
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary not in _FAULTS:
        text = str(exc).lower()
        primary = next((c for t, c in _FAULT_TEXT.items() if t in text), None)
    if primary is None:
        if not isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
            return None
        return RegistryUnavailable("the prompt registry failed on the server (a storage fault)")
    busy = primary in (5, 6)
    return RegistryUnavailable(
        f"the prompt registry {_FAULTS[primary]}", retry_after=1 if busy else None
    )


@dataclass(frozen=True)
class RegistryLimits:
    """Bounds of the store; see the module docstring."""

    max_prompts: int = DEFAULT_MAX_PROMPTS
    max_bytes: int = DEFAULT_MAX_BYTES
    max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES

    def __post_init__(self) -> None:
        if min(self.max_prompts, self.max_bytes, self.max_total_bytes) < 1:
            raise ValueError("registry limits must be positive")


@dataclass(frozen=True)
class PromptRecord:
    """One stored prompt's metadata (no payload)."""

    id: str
    model: str
    kind: str
    shape: tuple[int, ...]
    nbytes: int
    sha256: str
    recipe: Mapping[str, Any] = field(default_factory=dict)
    label: str | None = None
    created_at: float = 0.0
    #: Bytes the row counts against the bounds (payload, recipe, label).
    stored_bytes: int = 0
    #: Why part of the row could not be read back (those fields are left empty), or None.
    damaged: str | None = None


def prompt_digest(prompt: np.ndarray[Any, Any]) -> str:
    """SHA-256 (hex) of a prompt's float32 little-endian bytes: what the registry stores."""
    return hashlib.sha256(np.ascontiguousarray(prompt, dtype=_F32).tobytes()).hexdigest()


def new_prompt_id() -> str:
    """An unguessable id: 192 random bits from the OS's CSPRNG."""
    return ID_PREFIX + secrets.token_urlsafe(_ID_BYTES)


def _usable(record: PromptRecord | None) -> PromptRecord | None:
    if record is not None and record.damaged is not None:
        raise DamagedPrompt(record.damaged)
    return record


def _text(value: Any) -> str:
    """A text column read as bytes (see _ROW_COLUMNS), strictly decoded."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


def _row_record(row: tuple[Any, ...]) -> PromptRecord | None:
    """A row of _ROW_COLUMNS as a record that can always be sent back: fields that cannot
    be read are left empty and ``damaged`` says why. None for a row whose id is unreadable
    (nobody could name it to delete it; the log says so)."""
    try:
        prompt_id = _text(row[0])
        check_text(prompt_id, "id")
    except (UnicodeDecodeError, ProtocolViolation):
        log.warning("prompt registry: skipping a row whose id is not valid UTF-8")
        return None
    problems: list[str] = []

    def read(what: str, fn: Any, default: Any) -> Any:
        try:
            return fn()
        except (ValueError, TypeError, RecursionError, ProtocolViolation) as exc:
            # UnicodeDecodeError and JSONDecodeError are ValueErrors.
            problems.append(f"{what} ({type(exc).__name__})")
            return default

    def shape() -> tuple[int, ...]:
        dims = json.loads(_text(row[3]))
        if not isinstance(dims, list):
            raise TypeError("shape is not a list")
        return tuple(int(d) for d in dims)

    def recipe() -> dict[str, Any]:
        value = json.loads(_text(row[6]))
        if not isinstance(value, dict):
            raise TypeError("recipe is not an object")
        check_json_value(value, "recipe", max_depth=MAX_JSON_DEPTH)
        return value

    def label() -> str | None:
        if row[7] is None:
            return None
        text = _text(row[7])
        check_text(text, "label")
        return text

    def created_at() -> float:
        value = float(row[8])
        if not math.isfinite(value):
            raise ValueError("created_at is not finite")
        return value

    record = PromptRecord(
        id=prompt_id,
        model=read("model", lambda: _text(row[1]), ""),
        kind=read("kind", lambda: _text(row[2]), ""),
        shape=read("shape", shape, ()),
        nbytes=read("size", lambda: max(0, int(row[4])), 0),
        sha256=read("digest", lambda: _text(row[5]), ""),
        recipe=read("recipe", recipe, {}),
        label=read("label", label, None),
        created_at=read("creation time", created_at, 0.0),
        stored_bytes=read("stored size", lambda: max(0, int(row[9])), 0),
    )
    if not problems:
        return record
    return dataclasses.replace(
        record,
        damaged=f"stored prompt {prompt_id} has damaged metadata ({', '.join(problems)}); "
        "delete it and store the prompt again",
    )
