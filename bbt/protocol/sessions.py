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

import numpy as np

from bbt.protocol._models import ErrorType, ModelInfo
from bbt.protocol._sessions import (
    ProjectionSpec,
    SessionClosed,
    SessionInfo,
    SessionLogitsRequest,
    SessionOpenRequest,
)
from bbt.protocol.deep_sessions import (
    all_specs,
    check_deep_open,
    deep_fingerprint,
    deep_projector,
    deep_session_bytes,
    expand_deep_z,
    resolve_layer_p0,
    sent_z_dim,
)
from bbt.protocol.features import (
    DecodedFeaturesRequest,
    SessionFeaturesRequest,
    check_session_features,
)
from bbt.protocol.projection import Projection, project_rows

# The request checks and the limits live in bbt.protocol.session_requests; every name
# stays importable from here, where servers and clients have always found them.
from bbt.protocol.session_requests import MAX_Z_VALUE as MAX_Z_VALUE
from bbt.protocol.session_requests import FloatArray as FloatArray
from bbt.protocol.session_requests import IntArray as IntArray
from bbt.protocol.session_requests import SessionLimits as SessionLimits
from bbt.protocol.session_requests import check_session_logits as check_session_logits
from bbt.protocol.session_requests import check_session_open as check_session_open
from bbt.protocol.session_requests import decode_z as decode_z
from bbt.protocol.session_requests import recipe_of as recipe_of
from bbt.protocol.session_requests import resolve_p0 as resolve_p0
from bbt.protocol.session_requests import session_bytes as session_bytes
from bbt.protocol.session_requests import spec_of as spec_of
from bbt.protocol.validate import DecodedLogitsRequest, ProtocolViolation, check_prompt_values

#: Projects z [P, d] (float32) to prompts [P, n, H] (float32) for one session.
ProjectFn = Callable[[FloatArray], FloatArray]
#: A backend's optional way to project on its own device: given A [d, D] and p0 [n, H],
#: return the function that projects z. Its result need not be bitwise NumPy's.
Projector = Callable[[FloatArray, FloatArray], ProjectFn]


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
    #: Layers of a deep session (protocol 1.5); 1 for a shallow one.
    layers: int = 1


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
        check_deep_open(req, self.info, self.limits)
        spec = req.projection
        need = deep_session_bytes(req)
        with self._lock:  # refuse early (cheap) when there will be no room anyway
            now = self._clock()
            self._sweep(now)
            self._check_room(tenant, need, now)
        p0 = resolve_p0(req.p0, self.info, spec.n_tokens, self._embed, self._tokenize)
        p0s = [p0] if req.layers is None else [p0, *resolve_layer_p0(req, self.info)]
        projections = [Projection(recipe_of(s)) for s in all_specs(req)]
        fingerprint = projections[0].fingerprint()
        project = self._projector(projections[0].matrix, p0)
        if req.layers is not None:  # a deep session (1.5): one A_l and p0_l per layer
            fingerprint = deep_fingerprint([p.fingerprint() for p in projections])
            pairs = zip(projections, p0s, strict=True)
            layer_fns = [self._projector(p.matrix, q) for p, q in pairs]
            project = deep_projector(layer_fns, spec.dim)
        sid = secrets.token_urlsafe(24)
        info = SessionInfo(
            id=sid,
            model=self.info.id,
            projection=spec,
            fingerprint=fingerprint,
            nbytes=need,
            idle_timeout_s=self.limits.idle_timeout_s,
            layers=req.layers,
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
                layers=len(projections),
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
        dim = session.spec.dim
        width = sent_z_dim(req, session.layers, dim)
        z, texts, ids = check_session_logits(req, self.info, width, raw)
        prompts = self._project(session, expand_deep_z(req, z, session.layers, dim))
        return DecodedLogitsRequest(prompts=prompts, texts=texts, candidate_ids=ids)

    def decode_features(
        self,
        tenant: str,
        session_id: str,
        req: SessionFeaturesRequest,
        raw: bytes | None = None,
    ) -> DecodedFeaturesRequest:
        """The prompts of a session features call (1.3), as ``/v1/features`` takes them."""
        session = self._lookup(tenant, session_id)
        if session.layers > 1:
            raise ProtocolViolation("a deep session serves logits only", field="session_id")
        z = check_session_features(req, self.info, session.spec.dim, raw)
        prompts = self._project(session, z)
        return DecodedFeaturesRequest(prompts=prompts, texts=list(req.texts), pooling=req.pooling)

    def _project(self, session: HostedSession, z: FloatArray) -> FloatArray:
        with np.errstate(over="ignore", invalid="ignore"):
            prompts = np.asarray(session.project(z), dtype=np.float32)
        check_prompt_values(prompts, self.info, "z.data")
        return prompts

    def close(self, tenant: str, session_id: str) -> SessionClosed:
        self._lookup(tenant, session_id)
        with self._lock:
            self._sessions.pop(session_id, None)
        return SessionClosed(id=session_id)

    def ids(self, tenant: str | None = None) -> Sequence[str]:
        with self._lock:
            return [s.id for s in self._sessions.values() if tenant is None or s.tenant == tenant]
