"""What a projection session is, for every side that hosts one: the HTTP server
(``bbt.server.sessions``) and :class:`bbt.client.LocalClient`, which must not import the
server. Framework-free: a host hands in its model's ``embed`` and ``tokenize``.

A session holds A (rebuilt from the client's :class:`ProjectionSpec` with
:class:`bbt.protocol.projection.Projection`) and p0. Each logits call projects z to
prompts with :func:`bbt.protocol.projection.project_rows`, the same function the client's
``Projection.project`` uses, so on the same NumPy and BLAS the prompts are bitwise those a
client would have sent. A backend may project on its own device instead (``projector``).

Lifecycle and bounds (all in :class:`SessionLimits`):

- a session belongs to the tenant (a hash of the API key) that opened it; any other
  tenant, like an unknown id, gets ``session_not_found`` (404), so ids cannot be probed;
- it is dropped after ``idle_timeout_s`` without a call;
- its size is known from the recipe alone (:func:`session_bytes`), so an open is checked
  against every size bound *before* A is built: one session's A (D x d float32) at most
  ``max_projection_bytes``, one tenant's sessions at most ``max_key_bytes`` together;
  a request over either can never fit and is a 422 that names the bound;
- a tenant holds at most ``max_per_key`` sessions and ``max_key_bytes`` of them, and all
  sessions together at most ``max_total_bytes``. Opening past a bound first evicts the
  tenant's *own* least recently used sessions idle for at least ``evict_after_s`` (their
  client reopens them from the recipe); another tenant's sessions are never evicted, so
  one key cannot take another's work away by opening sessions. When the tenant's own
  sessions cannot make room the open fails with 429 (the tenant's slots or memory quota)
  or 503 (the server's memory, held by other tenants), with a ``Retry-After`` of when
  room may appear.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol._models import ErrorType, ModelInfo
from bbt.protocol._sessions import (
    InitialPromptSpec,
    ProjectionSpec,
    SessionClosed,
    SessionInfo,
    SessionLogitsRequest,
    SessionOpenRequest,
)
from bbt.protocol._tensor import TensorDecodeError
from bbt.protocol.projection import (
    RECIPE_VERSION,
    Projection,
    ProjectionRecipe,
    matrix_bytes,
    project_rows,
)
from bbt.protocol.validate import (
    DecodedLogitsRequest,
    ProtocolViolation,
    check_batch,
    check_model,
    check_prompt_values,
)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]
#: Projects z [P, d] (float32) to prompts [P, n, H] (float32) for one session.
ProjectFn = Callable[[FloatArray], FloatArray]
#: A backend's optional way to project on its own device: given A [d, D] and p0 [n, H],
#: return the function that projects z. Its result need not be bitwise NumPy's.
Projector = Callable[[FloatArray, FloatArray], ProjectFn]

#: Largest |z| entry accepted. CMA-ES samples are of order sigma (~1); far larger values
#: only serve to overflow the projection.
MAX_Z_VALUE = 1e6


@dataclass(frozen=True)
class SessionLimits:
    """Bounds of a session host (``bbt serve`` flags / ``BBT_SERVER_SESSION_*``)."""

    idle_timeout_s: float = 600.0
    max_per_key: int = 4
    max_total_bytes: int = 2 * 1024**3
    evict_after_s: float = 30.0
    max_dim: int = 100_000
    #: Largest A (D x d x 4 bytes) one session may build; None: only ``max_total_bytes``
    #: bounds it (a one-caller host such as LocalClient). The server sets one.
    max_projection_bytes: int | None = None
    #: Memory all sessions of one tenant may hold; None: ``max_total_bytes``.
    max_key_bytes: int | None = None

    def __post_init__(self) -> None:
        if not (self.idle_timeout_s > 0 and self.evict_after_s >= 0):
            raise ConfigurationError("session idle timeout must be positive")
        optional = [b for b in (self.max_projection_bytes, self.max_key_bytes) if b is not None]
        if min([self.max_per_key, self.max_total_bytes, self.max_dim, *optional]) < 1:
            raise ConfigurationError("session bounds must be positive")

    @property
    def key_bytes(self) -> int:
        """The memory quota of one tenant in force."""
        if self.max_key_bytes is None:
            return self.max_total_bytes
        return min(self.max_key_bytes, self.max_total_bytes)


class SessionNotFound(ProtocolViolation):
    def __init__(self) -> None:
        super().__init__(
            "session not found: it expired, was evicted or closed, or belongs to another "
            "API key; open it again",
            field="session_id",
            error_type=ErrorType.session_not_found,
        )


class SessionsFull(ProtocolViolation):
    """No room for another session now; ``retry_after`` seconds until there may be."""

    def __init__(self, message: str, error_type: ErrorType, retry_after: int) -> None:
        super().__init__(message, error_type=error_type)
        self.retry_after = retry_after


def tenant_of(token: str | None) -> str:
    """What a session records of the API key that opened it: a hash, never the key."""
    if not token:
        return ""
    return hashlib.sha256(b"bbt-session-tenant/1\n" + token.encode()).hexdigest()


@dataclass
class HostedSession:
    id: str
    tenant: str
    spec: ProjectionSpec
    fingerprint: str
    nbytes: int
    project: ProjectFn
    last_used: float
    info: SessionInfo = field(repr=False)


def recipe_of(spec: ProjectionSpec) -> ProjectionRecipe:
    """The recipe of ``spec``; one the generator cannot build (e.g. a scale beyond float32)
    is the caller's error, a 422 on ``projection``."""
    try:
        return ProjectionRecipe(
            seed=spec.seed,
            n_tokens=spec.n_tokens,
            hidden_size=spec.hidden_size,
            dim=spec.dim,
            embedding_std=spec.embedding_std,
            alpha=spec.alpha,
            sigma=spec.sigma,
            distribution=spec.distribution,
        )
    except ConfigurationError as exc:
        raise ProtocolViolation(str(exc), field="projection") from None


def spec_of(recipe: ProjectionRecipe) -> ProjectionSpec:
    return ProjectionSpec(
        recipe=RECIPE_VERSION,
        seed=recipe.seed,
        n_tokens=recipe.n_tokens,
        hidden_size=recipe.hidden_size,
        dim=recipe.dim,
        distribution=recipe.distribution,
        alpha=recipe.alpha,
        sigma=recipe.sigma,
        embedding_std=recipe.embedding_std,
    )


def session_bytes(spec: ProjectionSpec) -> int:
    """Memory one session holds: A [d, n*H] and p0 [n, H], float32."""
    return matrix_bytes(spec.n_tokens, spec.hidden_size, spec.dim + 1)


def check_session_open(req: SessionOpenRequest, info: ModelInfo, limits: SessionLimits) -> None:
    check_model(req.model, info)
    spec = req.projection
    if spec.recipe != RECIPE_VERSION:
        raise ProtocolViolation(
            f"projection recipe {spec.recipe!r} is not implemented here; this server "
            f"builds {RECIPE_VERSION!r}",
            field="projection.recipe",
        )
    if spec.hidden_size != info.hidden_size:
        raise ProtocolViolation(
            f"projection hidden_size {spec.hidden_size} does not match the model's hidden size "
            f"{info.hidden_size}",
            field="projection.hidden_size",
        )
    if spec.n_tokens > info.limits.max_prompt_tokens:
        raise ProtocolViolation(
            f"prompt length n={spec.n_tokens}; at most {info.limits.max_prompt_tokens}",
            field="projection.n_tokens",
        )
    if spec.dim > limits.max_dim:
        raise ProtocolViolation(
            f"projection dim d={spec.dim}; at most {limits.max_dim}", field="projection.dim"
        )
    # Sizes from the recipe's numbers alone, before anything is built: a 121-byte request
    # must not cost the server seconds of CPU and hundreds of MB to refuse.
    a_bytes = matrix_bytes(spec.n_tokens, spec.hidden_size, spec.dim)
    cap = limits.max_projection_bytes
    if cap is not None and a_bytes > cap:
        raise ProtocolViolation(
            f"a projection of n={spec.n_tokens}, H={spec.hidden_size}, d={spec.dim} is a "
            f"matrix of {a_bytes} bytes (n*H*d*4); this server builds at most {cap} bytes "
            "per session (max_projection_bytes); use a smaller d or n",
            field="projection",
        )
    need = session_bytes(spec)
    if limits.max_key_bytes is not None and need > limits.key_bytes:
        raise ProtocolViolation(
            f"a session of n={spec.n_tokens}, H={spec.hidden_size}, d={spec.dim} needs "
            f"{need} bytes; one API key holds at most {limits.key_bytes} bytes of sessions "
            "(max_session_bytes_per_key)",
            field="projection",
        )
    if need > limits.max_total_bytes:
        raise ProtocolViolation(
            f"a session of n={spec.n_tokens}, H={spec.hidden_size}, d={spec.dim} needs "
            f"{need} bytes; this server holds at most {limits.max_total_bytes} bytes of "
            "sessions",
            field="projection",
        )


def resolve_p0(
    spec: InitialPromptSpec,
    info: ModelInfo,
    n_tokens: int,
    embed: Callable[[IntArray], FloatArray],
    tokenize: Callable[[list[str], bool], tuple[list[list[int]], list[list[str]]]],
) -> FloatArray:
    """p0 [n, H] from its spec; ProtocolViolation for one that does not fit the model."""
    h = info.hidden_size
    if spec.tensor is not None:
        if spec.tensor.shape != [n_tokens, h]:
            raise ProtocolViolation(
                f"p0 must have shape [{n_tokens}, {h}]; got {spec.tensor.shape}",
                field="p0.tensor.shape",
            )
        try:
            p0 = spec.tensor.to_numpy().astype(np.float32, copy=False)
        except TensorDecodeError as exc:
            raise ProtocolViolation(str(exc), field="p0.tensor.data") from None
        check_prompt_values(p0, info, "p0.tensor.data")
        return np.ascontiguousarray(p0)
    ids: list[int]
    if spec.token_ids is not None:
        if len(spec.token_ids) != n_tokens:
            raise ProtocolViolation(
                f"p0 needs {n_tokens} token ids (one per prompt token); got {len(spec.token_ids)}",
                field="p0.token_ids",
            )
        for i, tid in enumerate(spec.token_ids):
            if not 0 <= tid < info.vocab_size:
                raise ProtocolViolation(
                    f"token id {tid} is outside the vocabulary [0, {info.vocab_size})",
                    field=f"p0.token_ids.{i}",
                )
        ids = list(spec.token_ids)
    elif spec.text is not None:
        if len(spec.text) > info.limits.max_text_chars or not spec.text.strip():
            raise ProtocolViolation(
                f"p0 text must be non-blank and at most {info.limits.max_text_chars} characters",
                field="p0.text",
            )
        try:
            spec.text.encode("utf-8")
        except UnicodeEncodeError:
            raise ProtocolViolation("p0 text is not valid Unicode", field="p0.text") from None
        found = tokenize([spec.text], False)[0][0]
        if not found:
            raise ProtocolViolation("p0 text has no tokens", field="p0.text")
        ids = [found[i % len(found)] for i in range(n_tokens)]
    else:
        return np.zeros((n_tokens, h), dtype=np.float32)
    emb = np.asarray(embed(np.asarray(ids, dtype=np.int64)), dtype=np.float32)
    if emb.shape != (n_tokens, h):
        raise RuntimeError(f"backend embeddings have shape {emb.shape}, not {(n_tokens, h)}")
    return np.ascontiguousarray(emb)


def check_session_logits(
    req: SessionLogitsRequest, info: ModelInfo, dim: int, raw: bytes | None = None
) -> tuple[FloatArray, list[str], IntArray]:
    """Validate a session logits request and decode z; ProtocolViolation otherwise.

    ``raw`` is z's payload when the request came as a binary frame (``z.data`` is then
    empty)."""
    t = req.z
    if t.dtype not in info.dtypes:
        raise ProtocolViolation(f"dtype {t.dtype!r} is not supported here", field="z.dtype")
    if req.output_dtype not in info.dtypes:
        raise ProtocolViolation(
            f"output dtype {req.output_dtype!r} is not supported here", field="output_dtype"
        )
    if len(t.shape) != 2 or t.shape[1] != dim:
        raise ProtocolViolation(
            f"z must have shape [P, {dim}] for this session; got {t.shape}", field="z.shape"
        )
    check_batch(t.shape[0], req.texts, req.candidate_ids, info, "z.shape")
    if raw is not None:
        if t.data or len(raw) != t.nbytes:
            raise ProtocolViolation(
                f"a framed z of shape {t.shape} in {t.dtype} needs {t.nbytes} payload bytes "
                f"and an empty data field; got {len(raw)} bytes",
                field="z.data",
            )
        z = np.frombuffer(raw, dtype=np.dtype(t.dtype).newbyteorder("<")).reshape(t.shape)
        z = z.astype(np.float32)  # a writable, native-order copy
    else:
        try:
            z = t.to_numpy().astype(np.float32, copy=False)
        except TensorDecodeError as exc:
            raise ProtocolViolation(str(exc), field="z.data") from None
    if not np.isfinite(z).all():
        raise ProtocolViolation("z contains NaN or infinite values", field="z.data")
    largest = float(np.abs(z).max(initial=0.0))
    if largest > MAX_Z_VALUE:
        raise ProtocolViolation(
            f"a z entry has absolute value {largest:.3g}; the limit is {MAX_Z_VALUE:.3g}",
            field="z.data",
        )
    return z, list(req.texts), np.asarray(req.candidate_ids, dtype=np.int64)


def numpy_projector(matrix: FloatArray, p0: FloatArray) -> ProjectFn:
    n_tokens = p0.shape[0]

    def project(z: FloatArray) -> FloatArray:
        return project_rows(matrix, z, n_tokens, p0)

    return project


class SessionHost:
    """Sessions of one model: open, project, close, within :class:`SessionLimits`.

    Thread-safe: a server computes in worker threads. Building A (0.2 s and 102 MB at
    paper scale) happens outside the lock.
    """

    def __init__(
        self,
        info: ModelInfo,
        embed: Callable[[IntArray], FloatArray],
        tokenize: Callable[[list[str], bool], tuple[list[list[int]], list[list[str]]]],
        limits: SessionLimits | None = None,
        projector: Projector | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.info = info
        self.limits = limits if limits is not None else SessionLimits()
        self._embed = embed
        self._tokenize = tokenize
        self._projector = projector if projector is not None else numpy_projector
        self._clock = clock
        self._lock = threading.Lock()
        #: id -> session, least recently used first.
        self._sessions: OrderedDict[str, HostedSession] = OrderedDict()
        #: Sessions dropped for idleness or room (not closed by their client).
        self.evicted = 0

    # ------------------------------------------------------------------ bookkeeping

    @property
    def total_bytes(self) -> int:
        with self._lock:
            return sum(s.nbytes for s in self._sessions.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _sweep(self, now: float) -> None:
        timeout = self.limits.idle_timeout_s
        for sid in [s.id for s in self._sessions.values() if now - s.last_used >= timeout]:
            del self._sessions[sid]
            self.evicted += 1

    def evict(self, session_id: str) -> bool:
        """Drop a session as if it had expired (operators, tests)."""
        with self._lock:
            gone = self._sessions.pop(session_id, None)
            if gone is not None:
                self.evicted += 1
            return gone is not None

    def evict_all(self) -> int:
        with self._lock:
            n = len(self._sessions)
            self._sessions.clear()
            self.evicted += n
            return n

    def _plan_room(self, tenant: str, need: int, now: float) -> list[HostedSession]:
        """The sessions to evict for one more session of ``need`` bytes, or SessionsFull.

        Only ``tenant``'s own sessions idle for ``evict_after_s`` are candidates, least
        recently used first; nothing is evicted unless that makes room under every bound,
        so a tenant never loses sessions to an open that fails anyway. Evicts nothing.
        """
        lim = self.limits
        own = [s for s in self._sessions.values() if s.tenant == tenant]  # LRU first
        count = len(own)
        mine = sum(s.nbytes for s in own)
        total = sum(s.nbytes for s in self._sessions.values())
        victims: list[HostedSession] = []
        while True:
            if count >= lim.max_per_key:
                bound = "slots"
            elif mine + need > lim.key_bytes:
                bound = "key"
            elif total + need > lim.max_total_bytes:
                bound = "total"
            else:
                return victims
            candidate = own[len(victims)] if len(victims) < len(own) else None
            idle = now - candidate.last_used if candidate is not None else 0.0
            if candidate is None or idle < lim.evict_after_s:
                raise self._full(bound, tenant, count, mine, need, now, candidate)
            victims.append(candidate)
            count -= 1
            mine -= candidate.nbytes
            total -= candidate.nbytes

    def _full(
        self,
        bound: str,
        tenant: str,
        count: int,
        mine: int,
        need: int,
        now: float,
        candidate: HostedSession | None,
    ) -> SessionsFull:
        """The 429/503 of an open that found no room under ``bound``, with when to retry:
        when the tenant's next own session may be evicted, or (the server's memory) when
        another tenant's session expires, whichever comes first."""
        lim = self.limits
        waits = []
        if candidate is not None:
            waits.append(lim.evict_after_s - (now - candidate.last_used))
        if bound == "total":
            waits += [
                lim.idle_timeout_s - (now - s.last_used)
                for s in self._sessions.values()
                if s.tenant != tenant
            ]
        wait = max(1, math.ceil(min(waits, default=lim.evict_after_s)))
        if bound == "slots":
            return SessionsFull(
                f"this API key already holds {count} sessions, the most allowed, "
                f"all used in the last {lim.evict_after_s:g}s; close one or retry "
                f"after {wait}s",
                ErrorType.rate_limit,
                wait,
            )
        if bound == "key":
            return SessionsFull(
                f"this API key's sessions hold {mine} bytes; {need} more would pass its "
                f"quota of {lim.key_bytes} bytes (max_session_bytes_per_key), and none of "
                f"them has been idle {lim.evict_after_s:g}s; close one or retry after {wait}s",
                ErrorType.rate_limit,
                wait,
            )
        return SessionsFull(
            f"the server's session memory ({lim.max_total_bytes} bytes) is in use (other "
            f"API keys' sessions are never evicted for yours); retry after {wait}s",
            ErrorType.unavailable,
            wait,
        )

    def _make_room(self, tenant: str, need: int, now: float) -> None:
        """Evict what the bounds require for one more session of ``need`` bytes, or raise."""
        for victim in self._plan_room(tenant, need, now):
            del self._sessions[victim.id]
            self.evicted += 1

    def _lookup(self, tenant: str, session_id: str) -> HostedSession:
        now = self._clock()
        with self._lock:
            self._sweep(now)
            found = self._sessions.get(session_id)
            # Another tenant's session answers exactly as a missing one: ids stay secret.
            if found is None or not secrets.compare_digest(found.tenant, tenant):
                raise SessionNotFound()
            found.last_used = now
            self._sessions.move_to_end(session_id)
            return found

    # ------------------------------------------------------------------ operations

    def open(self, tenant: str, req: SessionOpenRequest) -> SessionInfo:
        check_session_open(req, self.info, self.limits)
        spec = req.projection
        need = session_bytes(spec)
        with self._lock:  # refuse early (cheap) when there will be no room anyway
            now = self._clock()
            self._sweep(now)
            self._check_room(tenant, need, now)
        p0 = resolve_p0(req.p0, self.info, spec.n_tokens, self._embed, self._tokenize)
        projection = Projection(recipe_of(spec))
        fingerprint = projection.fingerprint()
        project = self._projector(projection.matrix, p0)
        sid = secrets.token_urlsafe(24)
        info = SessionInfo(
            id=sid,
            model=self.info.id,
            projection=spec,
            fingerprint=fingerprint,
            nbytes=need,
            idle_timeout_s=self.limits.idle_timeout_s,
        )
        with self._lock:
            now = self._clock()
            self._sweep(now)
            self._make_room(tenant, need, now)
            self._sessions[sid] = HostedSession(
                id=sid,
                tenant=tenant,
                spec=spec,
                fingerprint=fingerprint,
                nbytes=need,
                project=project,
                last_used=now,
                info=info,
            )
        return info

    def _check_room(self, tenant: str, need: int, now: float) -> None:
        """Raise now if :meth:`_make_room` would, without evicting anything yet."""
        self._plan_room(tenant, need, now)

    def decode(
        self,
        tenant: str,
        session_id: str,
        req: SessionLogitsRequest,
        raw: bytes | None = None,
    ) -> DecodedLogitsRequest:
        """The prompts of a session call, projected and checked as ``/v1/logits`` would."""
        session = self._lookup(tenant, session_id)
        z, texts, ids = check_session_logits(req, self.info, session.spec.dim, raw)
        with np.errstate(over="ignore", invalid="ignore"):
            prompts = np.asarray(session.project(z), dtype=np.float32)
        check_prompt_values(prompts, self.info, "z.data")
        return DecodedLogitsRequest(prompts=prompts, texts=texts, candidate_ids=ids)

    def close(self, tenant: str, session_id: str) -> SessionClosed:
        self._lookup(tenant, session_id)
        with self._lock:
            self._sessions.pop(session_id, None)
        return SessionClosed(id=session_id)

    def ids(self, tenant: str | None = None) -> Sequence[str]:
        with self._lock:
            return [s.id for s in self._sessions.values() if tenant is None or s.tenant == tenant]
