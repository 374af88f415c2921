"""Planning the features calls (protocol 1.3): split over the server's limits, no I/O.

:class:`bbt.Client`, :class:`bbt.AsyncClient` and :class:`bbt.client.LocalClient` plan a
``features`` or ``session_features`` call here, send its chunks their own way, and put the
answers together with :func:`assemble_features`, so the three agree on the split, the
checks and the usage counted. A model without the ``"features"`` capability is refused
here, before anything is sent, with the error the server would answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel

from bbt.client.planning import FloatArray, _even_bounds, checked, decode_tensor, invalid, plan_grid
from bbt.client.projection_sessions import ProjectionSession, z_grid
from bbt.client.transport import RawBody, UsageStats
from bbt.errors import InvalidRequestError
from bbt.protocol import (
    FEATURES_CAPABILITY,
    FRAME_CONTENT_TYPE,
    DType,
    FeaturesRequest,
    FeaturesResponse,
    ModelInfo,
    SessionFeaturesRequest,
    Tensor,
    encode_frame,
    encoded_size,
)
from bbt.protocol.features import (
    DecodedFeaturesRequest,
    Pooling,
    check_features_request,
    check_session_features,
    no_features,
)


@dataclass(frozen=True)
class FeaturesChunk:
    """One request's share of a features call: prompts (or z) [p0:p1] on texts [b0:b1]."""

    p0: int
    p1: int
    b0: int
    b1: int
    request: FeaturesRequest | SessionFeaturesRequest
    #: What the server decodes: the prompts and texts of a plain call (None for a session
    #: call, whose prompts the server projects).
    decoded: DecodedFeaturesRequest | None = None
    #: z's bytes of a session call, sent after the request as a binary frame.
    raw: bytes = b""

    @property
    def body(self) -> BaseModel | RawBody:
        if isinstance(self.request, SessionFeaturesRequest):
            return RawBody(encode_frame(self.request, self.raw), FRAME_CONTENT_TYPE)
        return self.request

    @property
    def sequences(self) -> int:
        return (self.p1 - self.p0) * (self.b1 - self.b0)


def require_features(info: ModelInfo) -> None:
    """Refuse, before sending, a model that does not list the ``features`` capability."""
    if FEATURES_CAPABILITY not in info.capabilities:
        raise invalid(no_features(info.id))


def _texts(texts: Sequence[str]) -> tuple[list[str], int]:
    """The texts as a list and an upper bound of one's JSON size; at least one."""
    out = list(texts)
    if not out:
        raise InvalidRequestError("need at least one text", field="texts")
    return out, max(6 * len(t) + 3 for t in out)


def plan_features(
    info: ModelInfo,
    texts: Sequence[str],
    prompts: np.ndarray[Any, Any] | None,
    pooling: Pooling,
    dtype: DType = "float32",
    min_requests: int = 1,
) -> list[FeaturesChunk]:
    """Split and pre-flight check a features call, as :func:`plan_logits` does for logits."""
    require_features(info)
    texts, text_bytes = _texts(texts)
    arr = None if prompts is None else np.asarray(prompts)
    if arr is not None and (arr.ndim != 3 or arr.shape[0] == 0):
        raise InvalidRequestError(
            f"prompts must have shape [P, n, H] with P >= 1; got {list(arr.shape)}",
            field="prompts",
        )
    n_prompts = 1 if arr is None else int(arr.shape[0])
    prompt_bytes = 0 if arr is None else encoded_size((1, *arr.shape[1:]), dtype)
    groups_p, groups_b = plan_grid(
        n_prompts, len(texts), info.limits, prompt_bytes=prompt_bytes, text_bytes=text_bytes
    )
    groups_p = max(groups_p, min(n_prompts, -(-min_requests // groups_b)))
    chunks = []
    for p0, p1 in _even_bounds(n_prompts, groups_p):
        tensor = None
        if arr is not None:
            try:
                tensor = Tensor.from_numpy(arr[p0:p1], dtype)
            except ValueError as exc:  # values beyond float16's range
                raise InvalidRequestError(str(exc), field="prompts") from exc
        for b0, b1 in _even_bounds(len(texts), groups_b):
            with checked(b0):
                req = FeaturesRequest(
                    model=info.id, texts=texts[b0:b1], prompts=tensor, pooling=pooling
                )
                decoded = check_features_request(req, info)
            chunks.append(FeaturesChunk(p0, p1, b0, b1, req, decoded))
    return chunks


def plan_session_features(
    info: ModelInfo,
    session: ProjectionSession,
    z: np.ndarray[Any, Any],
    texts: Sequence[str],
    pooling: Pooling,
) -> list[FeaturesChunk]:
    """Split and pre-flight check a session features call: z [P, d] travels as float32 in
    a binary frame (no base64)."""
    require_features(info)
    texts, text_bytes = _texts(texts)
    arr = np.asarray(z)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != session.dim or arr.shape[0] == 0:
        raise InvalidRequestError(
            f"z must have shape [P, {session.dim}] with P >= 1; got {list(np.shape(z))}",
            field="z",
        )
    groups_p, groups_b = plan_grid(
        arr.shape[0], len(texts), info.limits, prompt_bytes=4 * session.dim, text_bytes=text_bytes
    )
    chunks = []
    for p0, p1, b0, b1, (tensor, raw, _) in z_grid(
        arr, len(texts), groups_p, groups_b, pad_lone=False
    ):
        with checked(b0):
            req = SessionFeaturesRequest(z=tensor, texts=texts[b0:b1], pooling=pooling)
            check_session_features(req, info, session.dim, raw)
        chunks.append(FeaturesChunk(p0, p1, b0, b1, req, raw=raw))
    return chunks


def assemble_features(
    chunks: Sequence[FeaturesChunk], answers: Sequence[FeaturesResponse], usage: UsageStats
) -> FloatArray:
    """The call's features [P, B, F] from its chunks' answers, in order; usage counted
    (``calls`` += P, as for logits: each prompt evaluated on the batch)."""
    n_prompts = max(c.p1 for c in chunks)
    n_texts = max(c.b1 for c in chunks)
    width = answers[0].features.shape[-1] if answers[0].features.shape else 0
    out = np.empty((n_prompts, n_texts, width), dtype=np.float32)
    for chunk, resp in zip(chunks, answers, strict=True):
        shape = [chunk.p1 - chunk.p0, chunk.b1 - chunk.b0, width]
        out[chunk.p0 : chunk.p1, chunk.b0 : chunk.b1] = decode_tensor(
            resp.features, shape, "features"
        )
        usage.sequences += resp.usage.sequences
        usage.tokens += resp.usage.tokens
    usage.calls += n_prompts
    return out


__all__ = [
    "FeaturesChunk",
    "assemble_features",
    "plan_features",
    "plan_session_features",
    "require_features",
]
