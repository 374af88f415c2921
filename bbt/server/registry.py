"""The prompt registry's store: tuned prompts kept in SQLite, scoped to the key that stored them.

A client stores a tuned prompt once and later scores texts against it by id, so a
prediction uploads nothing but the texts (``docs/protocol.md``, *Prompt registry*). This
module is the embedded store under those endpoints; it knows nothing of HTTP.

Storage
    One SQLite file (stdlib ``sqlite3``) in WAL mode. Every change is one transaction, so a
    crash (``kill -9``, a power cut) leaves either the whole change or none of it. With
    ``synchronous=FULL`` (the default here) SQLite fsyncs the write-ahead log at every
    commit: a prompt whose store call was answered survives a power cut too. ``NORMAL``
    skips that fsync (still safe against a process crash, but the last commits may be lost
    to a power cut) and is offered for slow disks. The schema version is SQLite's
    ``user_version``; a file written by a newer bbt is refused, never rewritten.

Tenancy
    Rows are keyed by a *tenant*: an HMAC-SHA256 of the caller's API key under a random
    salt kept in the file, never the key itself (:meth:`PromptRegistry.tenant_of`). Every
    read and delete filters on the tenant, so another key's prompt is indistinguishable
    from a prompt that does not exist. A server without API keys stores everything under
    one anonymous tenant.

Bounds
    Per tenant at most ``max_prompts`` prompts and ``max_bytes`` stored bytes, and at most
    ``max_total_bytes`` over all tenants: :class:`RegistryFull` past any of them. A row's
    stored bytes are its payload plus what the client chose the size of (the recipe's JSON,
    the label), kept in the ``stored_bytes`` column; its fixed-size fields are bounded by
    ``max_prompts``. Rows from before that column (or written by an older bbt, which leaves
    it empty) count their payload until the next open fills it in.

Faults
    A storage fault (disk full, a read-only file, an I/O error, a lock held past the busy
    timeout, a damaged file) raises :class:`RegistryUnavailable`, which the server answers
    with a typed 503; a failed change is rolled back, so the store works again once the
    fault is gone. A row that cannot be read back (bad UTF-8, a recipe nested too deep) is a
    record with ``damaged`` set, never an exception that takes a whole list down.

Payloads are the float32 little-endian bytes of the prompt the server serves (shape
``[n, H]``, or ``[L, n, H]`` for a deep prompt), with a SHA-256 digest checked on every
load; how the prompt was made (a projection recipe plus z, say) is kept beside it as JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol._registry import MAX_JSON_DEPTH, check_json_value, check_text
from bbt.protocol._validate import ProtocolViolation

log = logging.getLogger("bbt.server")

#: Version of the tables below (SQLite ``user_version``); bump with a migration in _migrate.
SCHEMA_VERSION = 1
#: File name of the registry under bbt's per-user directory.
REGISTRY_FILE = "registry.sqlite3"
#: Environment variable naming bbt's per-user directory (shared with the checkpoint key).
HOME_ENV = "BBT_HOME"
#: Tenant of every caller when the server has no API keys.
ANONYMOUS = "anonymous"
#: Prefix of every prompt id: tells an id from other strings in logs and run directories.
ID_PREFIX = "bp_"
#: Random bytes in an id (URL-safe base64 of 24 bytes: 32 characters, 192 bits).
_ID_BYTES = 24

DEFAULT_MAX_PROMPTS = 1000
DEFAULT_MAX_BYTES = 256 * 2**20
DEFAULT_MAX_TOTAL_BYTES = 4 * 2**30

Synchronous = Literal["FULL", "NORMAL"]
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


def default_path() -> Path:
    """``$BBT_HOME/registry.sqlite3``, else ``$XDG_DATA_HOME/bbt/registry.sqlite3``
    (default ``~/.local/share/bbt/registry.sqlite3``)."""
    home = os.environ.get(HOME_ENV)
    if home:
        return Path(home).expanduser() / REGISTRY_FILE
    xdg = os.environ.get("XDG_DATA_HOME")
    # The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".local" / "share"
    return base / "bbt" / REGISTRY_FILE


def open_registry(option: str | None, *, default: Path | None) -> PromptRegistry | None:
    """The registry a ``--registry`` option names: a path, ``none`` (off) or ``memory`` (a
    store that dies with the process); no option means ``default`` (None: off).

    Raises :class:`~bbt.errors.ConfigurationError` with a one-line reason when the file
    cannot be opened (a directory that cannot be made, a newer schema, not a database).
    """
    if option is None:
        return None if default is None else PromptRegistry(default)
    choice = option.strip()
    if choice.lower() == "none":
        return None
    if choice.lower() == "memory":
        return PromptRegistry(":memory:")
    if not choice:
        raise ConfigurationError("--registry needs a path, 'none' or 'memory'")
    path = Path(choice).expanduser()
    if path.is_dir():
        path = path / REGISTRY_FILE
    return PromptRegistry(path)


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


class PromptRegistry:
    """Tuned prompts in one SQLite file (``":memory:"`` for a store that dies with the process).

    Thread-safe: one connection behind a lock (each call is a short transaction).
    """

    def __init__(
        self,
        path: str | Path,
        limits: RegistryLimits | None = None,
        *,
        synchronous: Synchronous = "FULL",
    ) -> None:
        self.limits = limits if limits is not None else RegistryLimits()
        self.path = str(path)
        self._lock = threading.Lock()
        if self.path != ":memory:":
            parent = Path(self.path).expanduser().parent
            try:
                parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot create the registry directory {parent}: {exc.strerror}"
                ) from None
        try:
            # isolation_level=None: no implicit transactions; each change opens its own
            # BEGIN IMMEDIATE (the write lock up front, so two processes on one file queue
            # instead of failing half-way).
            self._db = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=10.0
            )
            self._setup(synchronous)
        except sqlite3.Error as exc:
            raise ConfigurationError(
                f"cannot open the prompt registry {self.path}: {exc}"
            ) from None
        if self.path != ":memory:":
            # The file holds tuned prompts and tenants' hashes: its owner's business only.
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(OSError):  # -wal/-shm come and go with connections
                    os.chmod(self.path + suffix, 0o600)
        self._salt = self._meta_salt()

    # ------------------------------------------------------------------ set-up

    def _setup(self, synchronous: Synchronous) -> None:
        db = self._db
        if self.path != ":memory:":
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise sqlite3.OperationalError(f"cannot switch to WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute("PRAGMA foreign_keys=ON")
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this bbt's ({SCHEMA_VERSION}); "
                "upgrade bbt or point --registry elsewhere"
            )
        with self._transaction():
            self._create(version)

    def _create(self, version: int) -> None:
        # executescript() would COMMIT the open transaction first; run statements one by one.
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                self._db.execute(statement)
        columns = {str(row[1]) for row in self._db.execute("PRAGMA table_info(prompts)")}
        if "stored_bytes" not in columns:
            # Additive, so the schema version stays: an older bbt reads and writes the file
            # as before, leaving the column NULL on its rows (counted as their payload, and
            # filled in below at the next open).
            self._db.execute("ALTER TABLE prompts ADD COLUMN stored_bytes INTEGER")
        self._db.execute(
            f"UPDATE prompts SET stored_bytes = {_STORED_BYTES_SQL} WHERE stored_bytes IS NULL"
        )
        if version < SCHEMA_VERSION:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _meta_salt(self) -> bytes:
        with self._lock, self._transaction():
            row = self._db.execute("SELECT value FROM meta WHERE key = 'tenant_salt'").fetchone()
            if row is None:
                salt = secrets.token_hex(32)
                self._db.execute("INSERT INTO meta (key, value) VALUES ('tenant_salt', ?)", (salt,))
            else:
                salt = str(row[0])
        return bytes.fromhex(salt)

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            # Also when COMMIT itself failed (a full disk): a transaction left open would
            # make every later BEGIN fail. SQLite may have rolled back already (SQLITE_FULL
            # does), and a failing ROLLBACK must not hide the error that caused it.
            if self._db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def _storage(self) -> Iterator[None]:
        """Under the lock; storage faults raised as :class:`RegistryUnavailable`."""
        with self._lock:
            try:
                yield
            except sqlite3.Error as exc:
                fault = storage_fault(exc)
                if fault is None:
                    raise
                # The server's log gets SQLite's words (no key is in them); the client a
                # fixed sentence that names no path.
                log.warning("prompt registry %s: %s: %s", self.path, type(exc).__name__, exc)
                raise fault from None

    # ------------------------------------------------------------------ tenants

    def tenant_of(self, api_key: str | None) -> str:
        """The tenant of a caller presenting ``api_key`` (None: a server without keys).

        An HMAC under this file's salt: the file never holds a key, nor a plain hash of one
        that a dictionary of likely keys could be matched against.
        """
        if api_key is None:
            return ANONYMOUS
        return hmac.new(self._salt, api_key.encode(), hashlib.sha256).hexdigest()

    # ------------------------------------------------------------------ operations

    def put(
        self,
        tenant: str,
        model: str,
        prompt: np.ndarray[Any, Any],
        *,
        kind: str = "tensor",
        recipe: Mapping[str, Any] | None = None,
        label: str | None = None,
    ) -> tuple[PromptRecord, bool]:
        """Store ``prompt`` for ``tenant``; (record, True) when new, (record, False) when the
        tenant had already stored the same prompt (same model and bytes) under that record.

        Storing is idempotent on content, so a client that retries a store whose answer was
        lost gets the same id rather than a second copy.
        """
        arr = np.ascontiguousarray(prompt, dtype=_F32)
        payload = arr.tobytes()
        digest = hashlib.sha256(payload).hexdigest()
        shape = [int(d) for d in arr.shape]
        recipe_dict = dict(recipe or {})
        try:
            # The server checked these already (with its own, tighter, bounds); this keeps
            # a direct caller from storing a row that could never be read back.
            check_json_value(recipe_dict, "recipe")
            if label is not None:
                check_text(label, "label")
        except ProtocolViolation as exc:
            raise ValueError(exc.message) from None
        # ensure_ascii (the default): the column holds ASCII, so its bytes are its length.
        recipe_json = json.dumps(recipe_dict, sort_keys=True, separators=(",", ":"))
        nbytes = len(payload)
        stored = (
            nbytes
            + (len(recipe_json) if recipe_dict else 0)
            + (len(label.encode()) if label is not None else 0)
        )
        with self._storage(), self._transaction():
            db = self._db
            for row in db.execute(
                "SELECT id, payload FROM prompts WHERE tenant = ? AND model = ? AND sha256 = ?",
                (tenant, model, digest),
            ).fetchall():
                if hashlib.sha256(row[1]).hexdigest() == digest:
                    existing = self._record_by_id(tenant, str(row[0]))
                    if existing is not None and existing.damaged is None:
                        return existing, False
                # A damaged copy: replace it rather than hand back an id that cannot serve.
                db.execute("DELETE FROM prompts WHERE id = ?", (row[0],))
            count, used = db.execute(f"{_USAGE_SQL} WHERE tenant = ?", (tenant,)).fetchone()
            lim = self.limits
            if count + 1 > lim.max_prompts:
                raise RegistryFull(
                    f"this key already stores {count} prompts, the most the registry keeps "
                    "per key; delete some (DELETE /v1/prompts/{id}) and store again"
                )
            if used + stored > lim.max_bytes:
                raise RegistryFull(
                    f"this key's prompts take {used} bytes; {stored} more (the prompt, its "
                    f"recipe and label) would pass the {lim.max_bytes}-byte bound per key; "
                    "delete some and store again"
                )
            total = db.execute(_USAGE_SQL).fetchone()[1]
            if total + stored > lim.max_total_bytes:
                raise RegistryFull(
                    f"the server's prompt registry is full ({total} of "
                    f"{lim.max_total_bytes} bytes); ask its operator for room"
                )
            record = PromptRecord(
                id=new_prompt_id(),
                model=model,
                kind=kind,
                shape=tuple(shape),
                nbytes=nbytes,
                sha256=digest,
                recipe=json.loads(recipe_json),
                label=label,
                created_at=time.time(),
                stored_bytes=stored,
            )
            db.execute(
                "INSERT INTO prompts (id, tenant, model, kind, shape, nbytes, sha256, recipe, "
                "label, created_at, payload, stored_bytes) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    tenant,
                    model,
                    kind,
                    json.dumps(shape),
                    nbytes,
                    digest,
                    recipe_json,
                    label,
                    record.created_at,
                    payload,
                    stored,
                ),
            )
        return record, True

    def get(self, tenant: str, prompt_id: str) -> PromptRecord | None:
        """The metadata of ``tenant``'s prompt ``prompt_id``, or None (absent or not theirs);
        :class:`DamagedPrompt` for a row that cannot be read back."""
        with self._storage():
            record = self._record_by_id(tenant, prompt_id)
        return _usable(record)

    def load(self, tenant: str, prompt_id: str) -> tuple[PromptRecord, np.ndarray[Any, Any]] | None:
        """Metadata and the float32 prompt, or None; :class:`DamagedPrompt` for a bad row."""
        with self._storage():
            record = _usable(self._record_by_id(tenant, prompt_id))
            if record is None:
                return None
            row = self._db.execute(
                "SELECT payload FROM prompts WHERE id = ? AND tenant = ?", (prompt_id, tenant)
            ).fetchone()
        if row is None:  # pragma: no cover - deleted between the two reads, under the lock
            return None
        payload = bytes(row[0])
        expected = math.prod(record.shape) * _F32.itemsize
        if len(payload) != expected or hashlib.sha256(payload).hexdigest() != record.sha256:
            raise DamagedPrompt(
                f"stored prompt {prompt_id} is damaged (its bytes do not match its shape "
                "or digest); delete it and store the prompt again"
            )
        arr = np.frombuffer(payload, dtype=_F32).reshape(record.shape)
        return record, arr.astype(np.float32, copy=True)

    def page(
        self,
        tenant: str,
        limit: int,
        *,
        after: tuple[float, str] | None = None,
        max_bytes: int | None = None,
    ) -> tuple[list[PromptRecord], bool]:
        """(up to ``limit`` of ``tenant``'s prompts after ``after`` in the list's order,
        whether more follow). Oldest first, ties by id: a stable order for keyset paging.

        Rows are read one at a time and the page ends once their metadata passes
        ``max_bytes`` (it always holds one row), so memory is bounded by the page, not by
        what the tenant stored. Damaged rows come back with ``damaged`` set.
        """
        if limit < 1:
            raise ValueError("limit must be positive")
        # A creation time that is no finite number (a hand edit) cannot be a cursor: such a
        # row is left out of lists (GET and DELETE by id still reach it).
        sql = (
            f"SELECT {_ROW_COLUMNS} FROM prompts WHERE tenant = ?"
            " AND created_at BETWEEN -1e300 AND 1e300"
        )
        args: tuple[Any, ...] = (tenant,)
        if after is not None:
            sql += " AND (created_at, id) > (?, ?)"
            args += after
        sql += " ORDER BY created_at, id"
        out: list[PromptRecord] = []
        size = 0
        with self._storage():
            cursor = self._db.execute(sql, args)
            try:
                for row in cursor:
                    if len(out) == limit or (max_bytes is not None and out and size > max_bytes):
                        return out, True
                    record = _row_record(row)
                    if record is None:
                        continue
                    out.append(record)
                    # The row's free-form text is what varies; 512 covers the rest of it.
                    size += len(row[6] or b"") + len(row[7] or b"") + 512
            finally:
                cursor.close()
        return out, False

    def records(self, tenant: str) -> list[PromptRecord]:
        """Every prompt ``tenant`` stored, oldest first (at most ``max_prompts``)."""
        found, _ = self.page(tenant, max(1, self.limits.max_prompts) + 1)
        return found

    def delete(self, tenant: str, prompt_id: str) -> bool:
        """Delete ``tenant``'s prompt; False when there was none (or it is not theirs)."""
        with self._storage(), self._transaction():
            cur = self._db.execute(
                "DELETE FROM prompts WHERE id = ? AND tenant = ?", (prompt_id, tenant)
            )
            return cur.rowcount > 0

    def usage(self, tenant: str) -> tuple[int, int]:
        """(prompts, stored bytes) of ``tenant``: what the bounds are checked against."""
        with self._storage():
            count, used = self._db.execute(f"{_USAGE_SQL} WHERE tenant = ?", (tenant,)).fetchone()
        return int(count), int(used)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ rows

    def _record_by_id(self, tenant: str, prompt_id: str) -> PromptRecord | None:
        row = self._db.execute(
            f"SELECT {_ROW_COLUMNS} FROM prompts WHERE id = ? AND tenant = ?",
            (prompt_id, tenant),
        ).fetchone()
        return None if row is None else _row_record(row)


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


__all__ = [
    "ANONYMOUS",
    "SCHEMA_VERSION",
    "DamagedPrompt",
    "PromptRecord",
    "PromptRegistry",
    "RegistryError",
    "RegistryFull",
    "RegistryLimits",
    "RegistryUnavailable",
    "default_path",
    "new_prompt_id",
    "open_registry",
    "prompt_digest",
    "storage_fault",
]
