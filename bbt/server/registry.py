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
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol.registry import check_json_value, check_text
from bbt.protocol.validate import ProtocolViolation
from bbt.server._registry_rows import (
    _F32,
    _ROW_COLUMNS,
    _SCHEMA,
    _STORED_BYTES_SQL,
    _USAGE_SQL,
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PROMPTS,
    DEFAULT_MAX_TOTAL_BYTES,
    ID_PREFIX,
    DamagedPrompt,
    PromptRecord,
    RegistryError,
    RegistryFull,
    RegistryLimits,
    RegistryUnavailable,
    _row_record,
    _usable,
    new_prompt_id,
    prompt_digest,
    storage_fault,
)

log = logging.getLogger("bbt.server")

#: Version of the tables below (SQLite ``user_version``); bump with a migration in _migrate.
SCHEMA_VERSION = 1
#: File name of the registry under bbt's per-user directory.
REGISTRY_FILE = "registry.sqlite3"
#: Environment variable naming bbt's per-user directory (shared with the checkpoint key).
HOME_ENV = "BBT_HOME"
#: Tenant of every caller when the server has no API keys.
ANONYMOUS = "anonymous"
Synchronous = Literal["FULL", "NORMAL"]


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


# Defined in _registry_rows (records and refusals), served from here as they always were.
__all__ = [
    "ANONYMOUS",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_PROMPTS",
    "DEFAULT_MAX_TOTAL_BYTES",
    "HOME_ENV",
    "ID_PREFIX",
    "REGISTRY_FILE",
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
