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
    Per tenant at most ``max_prompts`` prompts and ``max_bytes`` bytes of payload, and at
    most ``max_total_bytes`` over all tenants: :class:`RegistryFull` past any of them.

Payloads are the float32 little-endian bytes of the prompt the server serves (shape
``[n, H]``, or ``[L, n, H]`` for a deep prompt), with a SHA-256 digest checked on every
load; how the prompt was made (a projection recipe plus z, say) is kept beside it as JSON.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
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
"""


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
    """A stored row whose payload does not match its shape or digest."""


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
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

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
        recipe_json = json.dumps(dict(recipe or {}), sort_keys=True, separators=(",", ":"))
        nbytes = len(payload)
        with self._lock, self._transaction():
            db = self._db
            for row in db.execute(
                "SELECT id, payload FROM prompts WHERE tenant = ? AND model = ? AND sha256 = ?",
                (tenant, model, digest),
            ).fetchall():
                if hashlib.sha256(row[1]).hexdigest() == digest:
                    existing = self._record_by_id(tenant, str(row[0]))
                    if existing is not None:
                        return existing, False
                # A damaged copy: replace it rather than hand back an id that cannot serve.
                db.execute("DELETE FROM prompts WHERE id = ?", (row[0],))
            count, used = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM prompts WHERE tenant = ?",
                (tenant,),
            ).fetchone()
            lim = self.limits
            if count + 1 > lim.max_prompts:
                raise RegistryFull(
                    f"this key already stores {count} prompts, the most the registry keeps "
                    "per key; delete some (DELETE /v1/prompts/{id}) and store again"
                )
            if used + nbytes > lim.max_bytes:
                raise RegistryFull(
                    f"this key's prompts take {used} bytes; {nbytes} more would pass the "
                    f"{lim.max_bytes}-byte bound per key; delete some and store again"
                )
            total = db.execute("SELECT COALESCE(SUM(nbytes), 0) FROM prompts").fetchone()[0]
            if total + nbytes > lim.max_total_bytes:
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
            )
            db.execute(
                "INSERT INTO prompts (id, tenant, model, kind, shape, nbytes, sha256, recipe, "
                "label, created_at, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
                ),
            )
        return record, True

    def get(self, tenant: str, prompt_id: str) -> PromptRecord | None:
        """The metadata of ``tenant``'s prompt ``prompt_id``, or None (absent or not theirs)."""
        with self._lock:
            return self._record_by_id(tenant, prompt_id)

    def load(self, tenant: str, prompt_id: str) -> tuple[PromptRecord, np.ndarray[Any, Any]] | None:
        """Metadata and the float32 prompt, or None; :class:`DamagedPrompt` for a bad row."""
        with self._lock:
            record = self._record_by_id(tenant, prompt_id)
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

    def records(self, tenant: str) -> list[PromptRecord]:
        """Every prompt ``tenant`` stored, oldest first (at most ``max_prompts``)."""
        with self._lock:
            ids = [
                str(row[0])
                for row in self._db.execute(
                    "SELECT id FROM prompts WHERE tenant = ? ORDER BY created_at, id", (tenant,)
                ).fetchall()
            ]
            found = [self._record_by_id(tenant, i) for i in ids]
        return [r for r in found if r is not None]

    def delete(self, tenant: str, prompt_id: str) -> bool:
        """Delete ``tenant``'s prompt; False when there was none (or it is not theirs)."""
        with self._lock, self._transaction():
            cur = self._db.execute(
                "DELETE FROM prompts WHERE id = ? AND tenant = ?", (prompt_id, tenant)
            )
            return cur.rowcount > 0

    def usage(self, tenant: str) -> tuple[int, int]:
        """(prompts, payload bytes) stored by ``tenant``."""
        with self._lock:
            count, used = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM prompts WHERE tenant = ?",
                (tenant,),
            ).fetchone()
        return int(count), int(used)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ------------------------------------------------------------------ rows

    def _record_by_id(self, tenant: str, prompt_id: str) -> PromptRecord | None:
        row = self._db.execute(
            "SELECT id, model, kind, shape, nbytes, sha256, recipe, label, created_at "
            "FROM prompts WHERE id = ? AND tenant = ?",
            (prompt_id, tenant),
        ).fetchone()
        if row is None:
            return None
        try:
            shape = tuple(int(d) for d in json.loads(row[3]))
            recipe = json.loads(row[6])
        except (ValueError, TypeError) as exc:
            raise DamagedPrompt(
                f"stored prompt {prompt_id} has damaged metadata ({type(exc).__name__}); "
                "delete it and store the prompt again"
            ) from None
        return PromptRecord(
            id=str(row[0]),
            model=str(row[1]),
            kind=str(row[2]),
            shape=shape,
            nbytes=int(row[4]),
            sha256=str(row[5]),
            recipe=recipe if isinstance(recipe, dict) else {},
            label=None if row[7] is None else str(row[7]),
            created_at=float(row[8]),
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
    "default_path",
    "new_prompt_id",
    "open_registry",
    "prompt_digest",
]
