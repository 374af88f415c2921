"""Deep projection sessions (protocol 1.5): BBTv2's per-layer prompts through a session.

A deep session holds one projection A_l (rebuilt from its recipe) and one p0_l per layer
of the model; a candidate is z of L * d numbers (layer-major) and its prompt is
``p_l = A_l z_l + p0_l`` for every layer, [L, n, H], which the backend scores on its
deep-prompt path (capability ``deep_prompts``). A server offers them when it offers both
sessions and deep prompts, and says so with the ``deep_sessions`` capability.

The wire (see docs/protocol.md, *Deep sessions*): the open request of 1.1 with ``layers``
(the recipes of layers 1 .. L-1; ``projection`` is layer 0's) and optionally ``layer_p0``
[L-1, n, H]. A logits request sends z [P, L * d], or, when only some layers differ
between the candidates (BBTv2 tunes one layer at a time), ``varying`` (those layers),
z [P, k * d] of their columns and ``held`` [L * d], the z they all share: a candidate
then costs 4 k d bytes instead of 4 L d. The server rebuilds the whole z by copying, so
the prompts are the same either way.

Each layer is projected with :func:`bbt.protocol.projection.project_rows` on a
C-contiguous copy of its columns, exactly as the client's own deep projection does, so
on the same NumPy and BLAS the prompts are bitwise those the client would have sent.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence

import numpy as np

from bbt.protocol._models import DEEP_PROMPTS, ModelInfo
from bbt.protocol._sessions import (
    DEEP_SESSIONS_CAPABILITY,
    SESSIONS_CAPABILITY,
    ProjectionSpec,
    SessionLogitsRequest,
    SessionOpenRequest,
)
from bbt.protocol._tensor import TensorDecodeError
from bbt.protocol.session_requests import (
    FloatArray,
    SessionLimits,
    check_session_open,
    decode_bounded_z,
    session_bytes,
)
from bbt.protocol.validate import ProtocolViolation, check_prompt_values

#: Projects z [P, d] (float32) to prompts [P, n, H] for one layer.
LayerProject = Callable[[FloatArray], FloatArray]


def session_capabilities(info: ModelInfo) -> list[str]:
    """What a host offering sessions for ``info`` adds to its capabilities: sessions, and
    deep sessions (1.5) when the model takes deep prompts."""
    extra = [SESSIONS_CAPABILITY]
    if DEEP_PROMPTS in info.capabilities:
        extra.append(DEEP_SESSIONS_CAPABILITY)
    return extra


def deep_fingerprint(layer_fingerprints: Sequence[str]) -> str:
    """The fingerprint of a deep projection: SHA-256 over every layer's
    :meth:`~bbt.protocol.projection.Projection.fingerprint`, in layer order (the same
    value BBTv2's client-side projection computes, so a client can compare)."""
    h = hashlib.sha256(f"bbt-deep-projection/1 {len(layer_fingerprints)}\n".encode())
    for fp in layer_fingerprints:
        h.update(fp.encode())
    return h.hexdigest()


def all_specs(req: SessionOpenRequest) -> list[ProjectionSpec]:
    """Every layer's projection spec of an open request (one for a shallow session)."""
    return [req.projection, *(req.layers or [])]


def check_deep_open(req: SessionOpenRequest, info: ModelInfo, limits: SessionLimits) -> None:
    """The checks of a deep open on top of a shallow one's (each layer's recipe alike)."""
    if req.layers is None:
        if req.layer_p0 is not None:
            raise ProtocolViolation("layer_p0 needs layers (a deep session)", field="layer_p0")
        return
    if DEEP_PROMPTS not in info.capabilities:
        raise ProtocolViolation(
            f"model {info.id!r} takes no deep prompts, so it opens no deep sessions",
            field="layers",
        )
    if len(req.layers) != info.num_layers - 1:
        raise ProtocolViolation(
            f"a deep session of this model has {info.num_layers} layers: 'layers' must hold "
            f"{info.num_layers - 1} projections (layer 0's is 'projection'); got {len(req.layers)}",
            field="layers",
        )
    first = req.projection
    for k, spec in enumerate(req.layers, start=1):
        if (spec.n_tokens, spec.dim, spec.hidden_size) != (
            first.n_tokens,
            first.dim,
            first.hidden_size,
        ):
            raise ProtocolViolation(
                "every layer's projection must have layer 0's n_tokens, dim and hidden_size",
                field=f"layers.{k - 1}",
            )
        layer_req = req.model_copy(update={"projection": spec, "layers": None})
        check_session_open(layer_req, info, limits)
    need = deep_session_bytes(req)
    if need > limits.key_bytes or need > limits.max_total_bytes:
        raise ProtocolViolation(
            f"a deep session of {info.num_layers} layers needs {need} bytes; this server "
            f"holds at most {min(limits.key_bytes, limits.max_total_bytes)} bytes of sessions "
            "for one API key",
            field="layers",
        )


def deep_session_bytes(req: SessionOpenRequest) -> int:
    """Memory a session holds: every layer's A and p0."""
    return sum(session_bytes(s) for s in all_specs(req))


def resolve_layer_p0(req: SessionOpenRequest, info: ModelInfo) -> FloatArray:
    """p0 of layers 1 .. L-1, [L-1, n, H]: ``layer_p0`` or zeros."""
    spec = req.projection
    shape = [info.num_layers - 1, spec.n_tokens, spec.hidden_size]
    t = req.layer_p0
    if t is None:
        return np.zeros(shape, dtype=np.float32)
    if t.shape != shape:
        raise ProtocolViolation(
            f"layer_p0 must have shape {shape}; got {t.shape}", field="layer_p0.shape"
        )
    try:
        p0 = np.ascontiguousarray(t.to_numpy(), dtype=np.float32)
    except TensorDecodeError as exc:
        raise ProtocolViolation(str(exc), field="layer_p0.data") from None
    check_prompt_values(p0, info, "layer_p0.data")
    return p0


def deep_projector(layers: Sequence[LayerProject], dim: int) -> Callable[[FloatArray], FloatArray]:
    """z [P, L * d] -> prompts [P, L, n, H], one layer at a time."""

    def project(z: FloatArray) -> FloatArray:
        parts = [
            layer(np.ascontiguousarray(z[:, k * dim : (k + 1) * dim], dtype=np.float32))
            for k, layer in enumerate(layers)
        ]
        out: FloatArray = np.ascontiguousarray(np.stack(parts, axis=1), dtype=np.float32)
        return out

    return project


def expand_deep_z(
    req: SessionLogitsRequest, z: FloatArray, num_layers: int, dim: int
) -> FloatArray:
    """The whole z [P, L * d] of a deep session's request whose ``z`` (already decoded and
    checked to be [P, len(varying) * d]) holds only the ``varying`` layers."""
    if req.varying is None:
        return z
    if req.held is None:
        raise ProtocolViolation("varying needs held, the z the candidates share", field="held")
    if req.held.shape != [num_layers * dim]:
        raise ProtocolViolation(
            f"held must have shape [{num_layers * dim}]; got {req.held.shape}", field="held.shape"
        )
    held = decode_bounded_z(req.held)
    out = np.empty((z.shape[0], num_layers * dim), dtype=np.float32)
    out[:] = held[None, :]
    for j, layer in enumerate(req.varying):
        out[:, layer * dim : (layer + 1) * dim] = z[:, j * dim : (j + 1) * dim]
    return out


def sent_z_dim(req: SessionLogitsRequest, num_layers: int, dim: int) -> int:
    """The width ``z`` must have in a deep session's request; ProtocolViolation on a bad
    ``varying`` list (or one in a shallow session)."""
    if req.varying is None:
        if req.held is not None:
            raise ProtocolViolation("held needs varying", field="held")
        return num_layers * dim
    v = req.varying
    if num_layers == 1:
        raise ProtocolViolation("varying applies to deep sessions only", field="varying")
    ascending = all(a < b for a, b in itertools.pairwise(v))
    if not v or not ascending or not 0 <= v[0] <= v[-1] < num_layers:
        raise ProtocolViolation(
            f"varying must list distinct layers in [0, {num_layers}) in ascending order",
            field="varying",
        )
    return len(v) * dim
