"""What a client asks of a projection session, checked and decoded: an open request against
the model and the host's :class:`SessionLimits`, p0 resolved from its
spec, and a logits request's z. Apart from :mod:`bbt.protocol.sessions` (the host's
bookkeeping) because a client checks its own requests with the same code
(:mod:`bbt.client.projection_sessions`) without needing the host; every name stays importable
from :mod:`bbt.protocol.sessions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol._models import ModelInfo
from bbt.protocol._sessions import (
    InitialPromptSpec,
    ProjectionSpec,
    SessionLogitsRequest,
    SessionOpenRequest,
)
from bbt.protocol._tensor import Tensor, TensorDecodeError
from bbt.protocol.projection import RECIPE_VERSION, ProjectionRecipe, matrix_bytes
from bbt.protocol.validate import (
    ProtocolViolation,
    check_batch,
    check_dtype,
    check_model,
    check_prompt_values,
)

FloatArray = np.ndarray[Any, np.dtype[np.float32]]
IntArray = np.ndarray[Any, np.dtype[np.int64]]

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


def recipe_of(spec: ProjectionSpec) -> ProjectionRecipe:
    """The recipe of ``spec``; one the generator cannot build (e.g. a scale beyond float32)
    is the caller's error, a 422 on ``projection``."""
    try:
        return ProjectionRecipe(**{f.name: getattr(spec, f.name) for f in fields(ProjectionRecipe)})
    except ConfigurationError as exc:
        raise ProtocolViolation(str(exc), field="projection") from None


def spec_of(recipe: ProjectionRecipe) -> ProjectionSpec:
    return ProjectionSpec(recipe=RECIPE_VERSION, **asdict(recipe))


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


def decode_z(t: Tensor, raw: bytes | None = None) -> FloatArray:
    """z as float32 from its tensor (or, for a binary frame, its payload ``raw``), finite;
    ProtocolViolation on ``z.data`` otherwise. Shared by session logits and the registry's
    store-by-projection, which decode the same field the same way."""
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
    return z


def check_session_logits(
    req: SessionLogitsRequest, info: ModelInfo, dim: int, raw: bytes | None = None
) -> tuple[FloatArray, list[str], IntArray]:
    """Validate a session logits request and decode z; ProtocolViolation otherwise.

    ``raw`` is z's payload when the request came as a binary frame (``z.data`` is then
    empty)."""
    t = req.z
    check_dtype(t.dtype, info, "z.dtype")
    check_dtype(req.output_dtype, info, "output_dtype", "output dtype")
    if len(t.shape) != 2 or t.shape[1] != dim:
        raise ProtocolViolation(
            f"z must have shape [P, {dim}] for this session; got {t.shape}", field="z.shape"
        )
    check_batch(t.shape[0], req.texts, req.candidate_ids, info, "z.shape")
    z = decode_bounded_z(t, raw)
    return z, list(req.texts), np.asarray(req.candidate_ids, dtype=np.int64)


def decode_bounded_z(t: Tensor, raw: bytes | None = None) -> FloatArray:
    """:func:`decode_z` within :data:`MAX_Z_VALUE` (a session's z, for logits or features)."""
    z = decode_z(t, raw)
    largest = float(np.abs(z).max(initial=0.0))
    if largest > MAX_Z_VALUE:
        raise ProtocolViolation(
            f"a z entry has absolute value {largest:.3g}; the limit is {MAX_Z_VALUE:.3g}",
            field="z.data",
        )
    return z
