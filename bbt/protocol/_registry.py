"""Protocol 1.1, prompt registry: store a tuned prompt once, score texts against it by id.

Endpoints (see docs/protocol.md, *Prompt registry*)::

    POST   /v1/prompts                  PromptCreateRequest -> StoredPrompt   (201; 200 if known)
    GET    /v1/prompts                  -> PromptList                         (this key's)
    GET    /v1/prompts/{id}             -> StoredPrompt                       (metadata only)
    DELETE /v1/prompts/{id}             -> PromptDeleted
    POST   /v1/prompts/{id}/logits      PromptLogitsRequest -> LogitsResponse (logits [1, B, C])

A server offers them when its model lists the capability ``"prompt_registry"``. Prompts are
scoped to the API key that stored them: any other key gets 404 for them, as for an id that
never existed.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from bbt.protocol._models import ErrorType, ModelInfo, _Wire
from bbt.protocol._sessions import InitialPromptSpec, ProjectionSpec
from bbt.protocol._tensor import DType, Tensor, TensorDecodeError
from bbt.protocol._validate import (
    ProtocolViolation,
    check_batch,
    check_model,
    check_prompt_values,
)

#: Capability name a model lists in ``ModelInfo.capabilities`` when the registry is on.
PROMPT_REGISTRY_CAPABILITY = "prompt_registry"
#: Capability under which a model serves deep prompts ``[L, n, H]`` (one per layer).
DEEP_PROMPTS_CAPABILITY = "deep_prompts"
#: What a prompt id looks like: the prefix, then URL-safe base64 (ids are opaque otherwise).
PROMPT_ID_PATTERN = r"^bp_[A-Za-z0-9_-]{16,64}$"
_PROMPT_ID_RE = re.compile(PROMPT_ID_PATTERN)
#: Longest label a prompt may carry.
MAX_LABEL_CHARS = 200


class PromptCreateRequest(_Wire):
    """Store a tuned prompt: either the tensor itself, or how to make it.

    ``prompt`` has shape ``[n, H]`` (a soft prompt), or ``[L, n, H]`` (a deep prompt, one per
    layer) on a model that lists the ``"deep_prompts"`` capability. Instead of it, a
    ``projection`` (the recipe of a session's A), ``z`` ``[d]`` and optionally ``p0`` (a
    tensor or a spec the server resolves, as when opening a session): the server computes
    ``A z + p0`` once, with the generator that sessions use, and stores that prompt (so z
    uploads 2 KB where the prompt is 205 KB at paper scale). ``recipe`` records anything
    else about how the prompt was made; the server keeps it as given and hands it back.
    """

    model: str
    prompt: Tensor | None = Field(
        default=None, description="The prompt, shape [n, H] (or [L, n, H]: deep)."
    )
    projection: ProjectionSpec | None = Field(
        default=None, description="Instead of prompt: the projection A of p = A z + p0."
    )
    z: Tensor | None = Field(default=None, description="With projection: z, shape [d].")
    p0: InitialPromptSpec | None = Field(
        default=None, description="With projection: p0 (default: zeros)."
    )
    label: str | None = Field(
        default=None, max_length=MAX_LABEL_CHARS, description="A name for its owner's eyes."
    )
    recipe: dict[str, Any] | None = Field(
        default=None, description="How the prompt was made; kept as given, never interpreted."
    )

    @model_validator(mode="after")
    def _one_form(self) -> PromptCreateRequest:
        if (self.prompt is None) == (self.projection is None):
            raise ValueError("send either prompt, or projection and z (exactly one of the two)")
        if self.projection is not None and self.z is None:
            raise ValueError("projection needs z, shape [d]")
        if self.projection is None and (self.z is not None or self.p0 is not None):
            raise ValueError("z and p0 go with projection, not with prompt")
        return self


class StoredPrompt(_Wire):
    """A stored prompt's metadata; the tensor itself never travels back."""

    id: str = Field(description="Opaque, unguessable id; name it in the other calls.")
    object: Literal["prompt"] = "prompt"
    model: str
    kind: str = Field(description="'tensor' (stored as sent) or how the server made it.")
    shape: list[int] = Field(description="Shape of the served prompt: [n, H] or [L, n, H].")
    dtype: DType = Field(default="float32", description="How the server keeps it.")
    nbytes: int = Field(ge=0, description="Bytes the prompt takes in the registry.")
    sha256: str = Field(description="SHA-256 (hex) of the prompt's float32 little-endian bytes.")
    label: str | None = None
    recipe: dict[str, Any] = Field(default_factory=dict)
    created_at: float = Field(description="Unix time the prompt was stored.")


class PromptList(_Wire):
    """Every prompt the calling key stored, oldest first (metadata only)."""

    object: Literal["list"] = "list"
    data: list[StoredPrompt]


class PromptDeleted(_Wire):
    id: str
    object: Literal["prompt"] = "prompt"
    deleted: Literal[True] = True


class PromptLogitsRequest(_Wire):
    """``POST /v1/prompts/{id}/logits``: the texts and candidates, no tensor (P = 1)."""

    model: str
    texts: list[str] = Field(min_length=1, description="B input texts, each with one mask token.")
    candidate_ids: list[int] = Field(min_length=1, description="C vocabulary ids.")
    output_dtype: DType = "float32"


def is_prompt_id(value: str) -> bool:
    """Whether ``value`` has the form of a prompt id (says nothing of whether it exists)."""
    return bool(_PROMPT_ID_RE.fullmatch(value))


def check_prompt_shape(shape: list[int] | tuple[int, ...], info: ModelInfo, field: str) -> None:
    """A prompt of this shape can be served by ``info``'s model, or ProtocolViolation."""
    deep = DEEP_PROMPTS_CAPABILITY in getattr(info, "capabilities", ())
    if len(shape) == 3 and deep:
        layers, n, h = shape
        if layers != info.num_layers:
            raise ProtocolViolation(
                f"a deep prompt needs one prompt per layer ({info.num_layers}); got {layers}",
                field=field,
            )
    elif len(shape) == 2:
        n, h = shape
    else:
        accepted = "[n, H] or [L, n, H]" if deep else "[n, H]"
        raise ProtocolViolation(
            f"a stored prompt must have shape {accepted}; got rank {len(shape)}", field=field
        )
    if h != info.hidden_size:
        raise ProtocolViolation(
            f"prompt width {h} does not match the model's hidden size {info.hidden_size}",
            field=field,
        )
    if not 1 <= n <= info.limits.max_prompt_tokens:
        raise ProtocolViolation(
            f"prompt length n={n}; must be between 1 and {info.limits.max_prompt_tokens}",
            field=field,
        )


def check_prompt_create_request(
    req: PromptCreateRequest, info: ModelInfo
) -> np.ndarray[Any, np.dtype[np.float32]]:
    """Validate a store request that carries the prompt tensor; it, decoded, as float32.
    (A projection request is checked where the projection is built.)"""
    check_model(req.model, info)
    t = req.prompt
    if t is None:
        raise ProtocolViolation("no prompt tensor in this request", field="prompt")
    if t.dtype not in info.dtypes:
        raise ProtocolViolation(f"dtype {t.dtype!r} is not supported here", field="prompt.dtype")
    check_prompt_shape(t.shape, info, "prompt.shape")
    try:
        arr = t.to_numpy().astype(np.float32, copy=False)
    except TensorDecodeError as exc:
        raise ProtocolViolation(str(exc), field="prompt.data") from None
    check_prompt_values(arr, info, "prompt.data")
    return arr


def check_prompt_logits_request(req: PromptLogitsRequest, info: ModelInfo) -> None:
    """Validate a by-id logits request against ``info``'s limits (one prompt, B texts)."""
    check_model(req.model, info)
    if req.output_dtype not in info.dtypes:
        raise ProtocolViolation(
            f"output dtype {req.output_dtype!r} is not supported here", field="output_dtype"
        )
    # The stored prompt is a population of one: the /v1/logits limits with P = 1.
    check_batch(1, list(req.texts), list(req.candidate_ids), info, shape_field="prompt_id")


def unknown_prompt(prompt_id: str) -> ProtocolViolation:
    """The one answer for an id that does not exist *or* belongs to another key."""
    shown = prompt_id if is_prompt_id(prompt_id) else "(malformed id)"
    return ProtocolViolation(
        f"no stored prompt {shown} for this API key",
        field="prompt_id",
        error_type=ErrorType.not_found,
    )


__all__ = [
    "DEEP_PROMPTS_CAPABILITY",
    "MAX_LABEL_CHARS",
    "PROMPT_ID_PATTERN",
    "PROMPT_REGISTRY_CAPABILITY",
    "PromptCreateRequest",
    "PromptDeleted",
    "PromptList",
    "PromptLogitsRequest",
    "StoredPrompt",
    "check_prompt_create_request",
    "check_prompt_logits_request",
    "check_prompt_shape",
    "is_prompt_id",
    "unknown_prompt",
]
