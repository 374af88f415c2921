"""Features under a prompt (protocol 1.3): the hidden states a probe is fitted on.

Endpoints (new in 1.3; a server lists ``"features"`` in ``ModelInfo.capabilities``)::

    POST /v1/features                 FeaturesRequest        -> FeaturesResponse
    POST /v1/sessions/{id}/features   SessionFeaturesRequest -> FeaturesResponse

A features call takes the texts a logits call takes (rendered: a masked model's text holds
the mask token once) and, optionally, soft prompts [P, n, H] prepended exactly as
``/v1/logits`` prepends them. It answers one vector per (prompt, text) pair, [P, B, F]
(P = 1 without prompts): ``"mean"`` pools the model's last hidden state over the
sequence's own tokens (padding and the soft prompt's positions left out), ``"mask"`` takes
it at the mask position (a causal model: at the text's last token). A session call sends z
[P, d] instead of prompts, as a session logits call does.

The models and checks live here, apart from :mod:`bbt.protocol._models`, so the 1.3
additions stay in one module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bbt.protocol._models import ModelInfo, Usage
from bbt.protocol._tensor import DType, Tensor, TensorDecodeError
from bbt.protocol.session_requests import decode_bounded_z
from bbt.protocol.validate import (
    ProtocolViolation,
    capability_missing,
    check_batch,
    check_dtype,
    check_model,
    check_prompt_values,
)

#: The capability a server lists in ``ModelInfo.capabilities`` when it serves features.
FEATURES_CAPABILITY = "features"
#: The protocol version that introduced the features operation.
FEATURES_SINCE = "1.3"

#: How a sequence's last hidden states become one vector (see the module docstring).
Pooling = Literal["mean", "mask"]
POOLINGS: tuple[Pooling, ...] = ("mean", "mask")

FloatArray = np.ndarray[Any, np.dtype[np.float32]]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeaturesRequest(_Wire):
    """Feature vectors of B texts, under P soft prompts or none (1.3)."""

    model: str
    texts: list[str] = Field(
        min_length=1,
        description="B input texts, rendered as for /v1/logits (masked_lm: one mask token).",
    )
    prompts: Tensor | None = Field(
        default=None,
        description=(
            "Optional soft prompts [P, n, H], prepended exactly as /v1/logits does; none: "
            "the texts alone (P = 1)."
        ),
    )
    pooling: Pooling = Field(
        default="mean",
        description=(
            "mean: the last hidden state averaged over the sequence's tokens (padding and "
            "soft-prompt positions left out); mask: the last hidden state at the mask "
            "position (causal_lm: the text's last token)."
        ),
    )
    output_dtype: DType = "float32"


class SessionFeaturesRequest(_Wire):
    """Feature vectors of B texts under the prompts A z + p0 of a projection session (1.3)."""

    z: Tensor = Field(description="Points of the subspace, shape [P, d].")
    texts: list[str] = Field(min_length=1, description="B input texts, as for /v1/features.")
    pooling: Pooling = "mean"
    output_dtype: DType = "float32"


class FeaturesResponse(_Wire):
    model: str
    features: Tensor = Field(description="One vector per prompt and text, shape [P, B, F].")
    pooling: Pooling
    usage: Usage


@dataclass(frozen=True)
class DecodedFeaturesRequest:
    """A checked features request: prompts [P, n, H] (n = 0 without prompts) and texts."""

    prompts: FloatArray
    texts: list[str]
    pooling: Pooling


def _check_dtypes(info: ModelInfo, output_dtype: str) -> None:
    check_dtype(output_dtype, info, "output_dtype", "output dtype")


def check_features_request(req: FeaturesRequest, info: ModelInfo) -> DecodedFeaturesRequest:
    """Validate ``req`` against ``info`` and decode its prompts; ProtocolViolation otherwise."""
    check_model(req.model, info)
    _check_dtypes(info, req.output_dtype)
    t = req.prompts
    if t is None:
        check_batch(1, req.texts, [], info)
        prompts = np.zeros((1, 0, info.hidden_size), dtype=np.float32)
    else:
        check_dtype(t.dtype, info, "prompts.dtype")
        if len(t.shape) != 3 or t.shape[2] != info.hidden_size:
            raise ProtocolViolation(
                f"prompts must have shape [P, n, {info.hidden_size}]; got {t.shape}",
                field="prompts.shape",
            )
        if t.shape[1] > info.limits.max_prompt_tokens:
            raise ProtocolViolation(
                f"prompt length n={t.shape[1]}; at most {info.limits.max_prompt_tokens}",
                field="prompts.shape",
            )
        check_batch(t.shape[0], req.texts, [], info)
        try:
            prompts = t.to_numpy().astype(np.float32, copy=False)
        except TensorDecodeError as exc:
            raise ProtocolViolation(str(exc), field="prompts.data") from None
        check_prompt_values(prompts, info, "prompts.data")
    return DecodedFeaturesRequest(prompts=prompts, texts=list(req.texts), pooling=req.pooling)


def check_session_features(
    req: SessionFeaturesRequest, info: ModelInfo, dim: int, raw: bytes | None = None
) -> FloatArray:
    """Validate a session features request and decode z [P, d]; ProtocolViolation otherwise.

    ``raw`` is z's payload when the request came as a binary frame."""
    t = req.z
    check_dtype(t.dtype, info, "z.dtype")
    _check_dtypes(info, req.output_dtype)
    if len(t.shape) != 2 or t.shape[1] != dim:
        raise ProtocolViolation(
            f"z must have shape [P, {dim}] for this session; got {t.shape}", field="z.shape"
        )
    check_batch(t.shape[0], req.texts, [], info, "z.shape")
    return decode_bounded_z(t, raw)


def no_features(model_id: str) -> ProtocolViolation:
    """What a server (or a client, before sending) says when the model serves no features."""
    return capability_missing(
        model_id,
        "does not serve features",
        FEATURES_CAPABILITY,
        FEATURES_SINCE,
        "a backend that offers them",
    )


__all__ = [
    "FEATURES_CAPABILITY",
    "FEATURES_SINCE",
    "POOLINGS",
    "DecodedFeaturesRequest",
    "FeaturesRequest",
    "FeaturesResponse",
    "Pooling",
    "SessionFeaturesRequest",
    "check_features_request",
    "check_session_features",
    "no_features",
]
