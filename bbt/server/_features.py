"""The features endpoints (protocol 1.3), framework-free: ``/v1/features`` and its session twin;
and the score endpoint (protocol 1.6, ``/v1/score``: prompt log-probabilities, answered when
the backend lists ``"score"``, :class:`bbt.server.backend.Scores`, a causal LM).

:class:`~bbt.server._core.ServiceCore` routes both here, whichever transport a request came
by. A backend serves features when it lists the ``"features"`` capability
(:class:`bbt.server.backend.Features`); the routes answer 404 naming the capability
otherwise, before any compute.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from bbt.protocol import (
    FeaturesRequest,
    FeaturesResponse,
    ScoreRequest,
    ScoreResponse,
    SessionFeaturesRequest,
    Tensor,
)
from bbt.protocol.features import DecodedFeaturesRequest, check_features_request, no_features
from bbt.protocol.score import check_score_answer, check_score_request, no_score
from bbt.protocol.validate import ProtocolViolation
from bbt.server.backend import Features, Scores, supports

if TYPE_CHECKING:
    from bbt.server._core import ServiceCore


def _require(core: ServiceCore) -> None:
    # The backend's own declaration decides (not the core's info, which adds the
    # server's capabilities): a backend that lists none is refused before any work.
    if not supports(core.backend, Features):
        raise no_features(core.info.id)


def features(core: ServiceCore, req: FeaturesRequest) -> FeaturesResponse:
    _require(core)
    return answer(core, check_features_request(req, core.info), req.output_dtype)


def session_features(
    core: ServiceCore,
    tenant: str,
    session_id: str,
    req: SessionFeaturesRequest,
    raw: bytes | None = None,
) -> FeaturesResponse:
    """``raw`` is z's payload when the body was a binary frame."""
    _require(core)
    decoded = core._host().decode_features(tenant, session_id, req, raw)
    return answer(core, decoded, req.output_dtype)


def answer(
    core: ServiceCore, decoded: DecodedFeaturesRequest, output_dtype: Any
) -> FeaturesResponse:
    """Run the backend on a checked request and check what it gives back."""
    out, usage = core.backend.features(decoded.prompts, decoded.texts, decoded.pooling)
    expected = (decoded.prompts.shape[0], len(decoded.texts))
    if out.ndim != 3 or out.shape[:2] != expected:
        # A backend bug, not the caller's: surfaces as a 500 with the details logged.
        raise RuntimeError(f"backend returned features of shape {out.shape}, not {expected} + [F]")
    if not np.isfinite(out).all():
        raise RuntimeError("backend returned non-finite features")
    try:
        tensor = Tensor.from_numpy(out, dtype=output_dtype)
    except ValueError as exc:  # beyond float16's range: ask for float32 instead
        raise ProtocolViolation(str(exc), field="output_dtype") from None
    return FeaturesResponse(
        model=core.info.id, features=tensor, pooling=decoded.pooling, usage=usage
    )


def score(core: ServiceCore, req: ScoreRequest) -> ScoreResponse:
    """``/v1/score`` (1.6): refused (404 naming the capability) before any compute when the
    backend lists no ``"score"``."""
    if not supports(core.backend, Scores):
        raise no_score(core.info.id)
    texts = check_score_request(req, core.info)
    sums, counts, usage = core.backend.score(texts)
    # A backend bug, not the caller's, when this fails: a 500 with the details logged.
    sums, counts = check_score_answer(sums, counts, len(texts))
    return ScoreResponse(model=core.info.id, logprobs=sums, token_counts=counts, usage=usage)
