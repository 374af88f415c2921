"""Projection sessions on the client side (protocol 1.1): no I/O here.

A :class:`ProjectionSession` keeps the recipe the session was opened from, so a client can
reopen it by itself when the server answers ``session_not_found`` (the session expired,
was evicted, or the server restarted) and retry the call once: a tuning run never fails
because its session went away, and since A is rebuilt bit-exactly from the recipe the
results do not change either.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar

import numpy as np
from pydantic import BaseModel
from typing_extensions import Unpack

from bbt.client.planning import _even_bounds, checked, plan_grid
from bbt.client.transport import RawBody
from bbt.errors import APIStatusError, InvalidRequestError, ProtocolError
from bbt.protocol import (
    FRAME_CONTENT_TYPE,
    FeaturesResponse,
    InitialPromptSpec,
    LogitsResponse,
    ModelInfo,
    ProjectionSpec,
    SessionInfo,
    SessionLogitsRequest,
    SessionOpenRequest,
    Tensor,
    encode_frame,
    encoded_size,
)
from bbt.protocol.projection import ProjectionRecipe
from bbt.protocol.sessions import check_session_logits, spec_of

#: The error type of a 404 for a session that is gone (protocol 1.1).
SESSION_NOT_FOUND = "session_not_found"

#: What names a session's projection A: a recipe, or the wire spec made from one.
ProjectionLike = ProjectionRecipe | ProjectionSpec
#: A session's p0: the protocol's spec, an array [n, H], or None (zeros).
P0Like = InitialPromptSpec | np.ndarray[Any, Any] | None


class SessionOptions(TypedDict, total=False):
    """The keyword arguments of every service's ``open_session`` (and :func:`new_session`)."""

    expected_fingerprint: str | None
    """The fingerprint of the A the caller built itself; a server that builds another A
    is refused (:class:`~bbt.errors.ProtocolError`)."""
    layers: Sequence[ProjectionLike] | None
    """A deep session (protocol 1.5): the projections of layers 1 .. L-1."""
    layer_p0: np.ndarray[Any, Any] | None
    """A deep session's p0 of layers 1 .. L-1, [L-1, n, H] (default 0); needs ``layers``."""


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class SessionOp(Generic[M]):
    """A call on an open session: its route (``/sessions/{id}/{name}``) and its answer."""

    name: str
    answer: type[M]


SESSION_LOGITS = SessionOp("logits", LogitsResponse)
SESSION_FEATURES = SessionOp("features", FeaturesResponse)


@dataclass
class ProjectionSession:
    """An open session as a client sees it: the recipe to reopen it from, and its id now.

    ``expected_fingerprint`` (optional) is the fingerprint of the A the caller built
    itself; a server that rebuilds a different A (another NumPy) is refused with a
    :class:`~bbt.errors.ProtocolError` instead of silently projecting differently.
    """

    projection: ProjectionSpec
    p0: InitialPromptSpec = field(default_factory=InitialPromptSpec)
    expected_fingerprint: str | None = None
    info: SessionInfo | None = None
    #: How many times the client reopened the session after the server lost it.
    reopened: int = 0
    #: A deep session's projections of layers 1 .. L-1 (protocol 1.5), and their p0.
    layers: list[ProjectionSpec] | None = None
    layer_p0: Tensor | None = None

    @property
    def id(self) -> str:
        if self.info is None:
            raise ProtocolError("the session is not open")
        return self.info.id

    @property
    def num_layers(self) -> int:
        """L: 1 for a shallow session, the model's layers for a deep one."""
        return 1 + len(self.layers or [])

    @property
    def dim(self) -> int:
        """Numbers in one candidate z: d, or L * d for a deep session."""
        return self.projection.dim * self.num_layers


def as_spec(projection: ProjectionLike) -> ProjectionSpec:
    return projection if isinstance(projection, ProjectionSpec) else spec_of(projection)


def as_p0(p0: P0Like) -> InitialPromptSpec:
    if p0 is None:
        return InitialPromptSpec()
    if isinstance(p0, InitialPromptSpec):
        return p0
    return InitialPromptSpec(tensor=Tensor.from_numpy(np.asarray(p0, dtype=np.float32)))


def new_session(
    projection: ProjectionLike, p0: P0Like = None, **options: Unpack[SessionOptions]
) -> ProjectionSession:
    """A session not yet opened, as every service's ``open_session`` takes its arguments
    (``layers`` and ``layer_p0``: a deep session, protocol 1.5)."""
    layers, layer_p0 = options.get("layers"), options.get("layer_p0")
    if layers is None and layer_p0 is not None:
        raise InvalidRequestError("layer_p0 needs layers (a deep session)", field="layer_p0")
    deep = [as_spec(r) for r in layers] if layers is not None else None
    lp0 = None
    if layer_p0 is not None:
        lp0 = Tensor.from_numpy(np.ascontiguousarray(layer_p0, dtype=np.float32))
    fingerprint = options.get("expected_fingerprint")
    return ProjectionSession(as_spec(projection), as_p0(p0), fingerprint, layers=deep, layer_p0=lp0)


def open_request(info: ModelInfo, session: ProjectionSession) -> SessionOpenRequest:
    return SessionOpenRequest(
        model=info.id,
        projection=session.projection,
        p0=session.p0,
        layers=session.layers,
        layer_p0=session.layer_p0,
    )


def accept_open(session: ProjectionSession, answer: SessionInfo, reopening: bool) -> None:
    """Record the server's answer to an open; refuse one that built another A."""
    expected = session.expected_fingerprint
    if expected is not None and answer.fingerprint != expected:
        raise ProtocolError(
            "the server built a different projection A from the same recipe (fingerprint "
            f"{answer.fingerprint[:12]}, expected {expected[:12]}): another NumPy version "
            "on the server; project locally instead (sessions off)"
        )
    if answer.projection != session.projection or answer.layers != session.layers:
        raise ProtocolError("the server answered a session open with another recipe")
    session.info = answer
    if reopening:
        session.reopened += 1


def is_session_gone(exc: BaseException) -> bool:
    return isinstance(exc, APIStatusError) and exc.error_type == SESSION_NOT_FOUND


@dataclass(frozen=True)
class SessionChunk:
    """One request's share of a session call: z [p0:p1] on texts [b0:b1], sent as a
    binary frame (``request`` with ``z.data`` empty, then ``raw``: z's bytes)."""

    p0: int
    p1: int
    b0: int
    b1: int
    request: SessionLogitsRequest
    raw: bytes
    #: Rows of z sent: p1 - p0, or 2 for a lone row of a larger population (sent twice, the
    #: second answer dropped; see :func:`plan_session_logits`).
    rows_sent: int

    @property
    def body(self) -> RawBody:
        return RawBody(encode_frame(self.request, self.raw), FRAME_CONTENT_TYPE)

    @property
    def sequences(self) -> int:
        return self.rows_sent * (self.b1 - self.b0)


def plan_session_logits(
    info: ModelInfo,
    session: ProjectionSession,
    z: np.ndarray[Any, Any],
    texts: Sequence[str],
    candidate_ids: Sequence[int],
) -> list[SessionChunk]:
    """Split and pre-flight check a session call, as :func:`plan_logits` does for prompts.

    z travels as float32 whatever the client's prompt dtype: rounding it would change the
    prompts, and it is small anyway (4 d bytes a candidate, in a binary frame: no base64).

    A population split so that one request would carry a single row sends that row twice:
    BLAS rounds a lone row's product differently from the same row among others, and the
    full-prompt path projects the whole population at once. So the prompts the server
    builds are bitwise the client's whatever the split (unless the server takes one prompt
    a request, where no split can keep rows together).
    """
    arr = np.asarray(z)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != session.dim:
        raise InvalidRequestError(
            f"z must have shape [P, {session.dim}]; got {list(np.shape(z))}", field="z"
        )
    texts = list(texts)
    ids = [int(i) for i in candidate_ids]
    if arr.shape[0] == 0 or not texts or not ids:
        raise InvalidRequestError(
            "need at least one z, one text and one candidate id",
            field="z" if arr.shape[0] == 0 else "texts" if not texts else "candidate_ids",
        )
    text_bytes = max(6 * len(t) + 3 for t in texts)
    sent_z, varying, held = split_held(arr, session.num_layers, session.projection.dim)
    width = sent_z.shape[1]
    if held is not None:  # sent once a request, in JSON (base64)
        text_bytes += encoded_size(held.shape, "float32") // max(1, len(texts))
    groups_p, groups_b = plan_grid(
        arr.shape[0],
        len(texts),
        info.limits,
        prompt_bytes=4 * width,
        text_bytes=text_bytes,
    )
    chunks = []
    grid = z_grid(sent_z, len(texts), groups_p, groups_b, pad_lone=True)
    for p0, p1, b0, b1, z_frame in grid:
        tensor, raw, sent = z_frame
        with checked(b0):
            req = SessionLogitsRequest(
                z=tensor, texts=texts[b0:b1], candidate_ids=ids, varying=varying, held=held
            )
            check_session_logits(req, info, width, raw)
        chunks.append(SessionChunk(p0, p1, b0, b1, req, raw, sent))
    return chunks


def split_held(
    arr: np.ndarray[Any, Any], num_layers: int, dim: int
) -> tuple[np.ndarray[Any, Any], list[int] | None, Tensor | None]:
    """What a session call sends of z [P, L * d]: for a deep session whose candidates share
    some layers' z (BBTv2 varies one layer a generation), only the varying layers' columns,
    the layers' list and the shared row (protocol 1.5); else z itself. The server rebuilds
    the whole z by copying float32 values, so the prompts are the same."""
    if num_layers == 1 or arr.shape[0] < 2:
        return arr, None, None
    z32 = np.ascontiguousarray(arr, dtype=np.float32)
    blocks = z32.reshape(arr.shape[0], num_layers, dim)
    same = (blocks == blocks[:1]).all(axis=(0, 2))
    varying = [k for k in range(num_layers) if not same[k]]
    if not varying or len(varying) == num_layers:
        return arr, None, None
    held = z32[0].copy()
    for k in varying:
        held[k * dim : (k + 1) * dim] = 0.0
    cols = np.concatenate([z32[:, k * dim : (k + 1) * dim] for k in varying], axis=1)
    return cols, varying, Tensor.from_numpy(held)


#: z rows as a session request sends them: the tensor header (its data empty), the rows'
#: float32 bytes for the binary frame, and how many rows that is.
ZFrame = tuple[Tensor, bytes, int]


def z_grid(
    arr: np.ndarray[Any, Any], n_texts: int, groups_p: int, groups_b: int, *, pad_lone: bool
) -> Iterator[tuple[int, int, int, int, ZFrame]]:
    """The requests of a session call split ``groups_p`` x ``groups_b``: z rows [p0:p1] on
    texts [b0:b1], each range of rows encoded once. ``pad_lone``: a lone row of a larger
    population is sent twice (see :func:`plan_session_logits`)."""
    bounds = _even_bounds(arr.shape[0], groups_p)
    widest = max(p1 - p0 for p0, p1 in bounds)
    for p0, p1 in bounds:
        rows = np.ascontiguousarray(arr[p0:p1], dtype="<f4")
        if pad_lone and p1 - p0 == 1 and widest >= 2:
            rows = np.concatenate([rows, rows])  # a lone row of a population
        frame = (
            Tensor(dtype="float32", shape=list(rows.shape), data=""),
            rows.tobytes(),
            rows.shape[0],
        )
        for b0, b1 in _even_bounds(n_texts, groups_b):
            yield p0, p1, b0, b1, frame


__all__ = [
    "SESSION_NOT_FOUND",
    "ProjectionSession",
    "SessionChunk",
    "accept_open",
    "as_p0",
    "as_spec",
    "is_session_gone",
    "new_session",
    "open_request",
    "plan_session_logits",
    "split_held",
    "z_grid",
]
