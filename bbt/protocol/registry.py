"""Protocol 1.1, prompt registry: store a tuned prompt once, score texts against it by id.

Endpoints (see docs/protocol.md, *Prompt registry*)::

    POST   /v1/prompts                  PromptCreateRequest -> StoredPrompt   (201; 200 if known)
    GET    /v1/prompts?limit=&cursor=   -> PromptList                         (a page; 1.2)
    GET    /v1/prompts/{id}             -> StoredPrompt                       (metadata only)
    DELETE /v1/prompts/{id}             -> PromptDeleted
    POST   /v1/prompts/{id}/logits      PromptLogitsRequest -> LogitsResponse (logits [1, B, C])

A server offers them when its model lists the capability ``"prompt_registry"``. Prompts are
scoped to the API key that stored them: any other key gets 404 for them, as for an id that
never existed.
"""

from __future__ import annotations

import base64
import math
import re
from typing import Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from bbt.protocol._models import ErrorType, ModelInfo, _Wire
from bbt.protocol._sessions import InitialPromptSpec, ProjectionSpec
from bbt.protocol._tensor import DType, Tensor, TensorDecodeError
from bbt.protocol.validate import (
    ProtocolViolation,
    check_batch,
    check_dtype,
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
#: Default bound on a stored recipe's size: JSON bytes as the server keeps it (compact,
#: ASCII-escaped). A recipe is provenance, not a second copy of the prompt; a server may
#: set another bound (``BBT_SERVER_REGISTRY_MAX_RECIPE_BYTES``).
DEFAULT_MAX_RECIPE_BYTES = 64 * 1024
#: Default bound on a recipe's nesting (objects and arrays inside one another). What a
#: person or a tuner writes needs a handful of levels.
DEFAULT_MAX_RECIPE_DEPTH = 32
#: Hard bound on nesting, whatever a server sets: pydantic's serialiser gives up at 255
#: levels (a 500 for every list holding the row), and a recipe sits 3 levels down in a list.
MAX_JSON_DEPTH = 128
#: ``GET /v1/prompts`` page size when the client names none. Large enough that a client
#: from before paging (1.1) still sees a typical key's whole list on its one page.
DEFAULT_PAGE_SIZE = 100
#: Largest page a client may ask for; a larger ``limit`` is clamped to it.
MAX_PAGE_SIZE = 1000


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

    @field_validator("label", mode="before")
    @classmethod
    def _encodable_label(cls, value: Any) -> Any:
        # Before pydantic's own str check, whose message for a lone surrogate does not
        # say what is wrong.
        if isinstance(value, str):
            try:
                check_text(value, "label")
            except ProtocolViolation as exc:
                raise ValueError(exc.message) from None
        return value

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
    damaged: str | None = Field(
        default=None,
        description="Set (in a list) when the server cannot read part of this row back: "
        "why. The fields it could not read are empty; delete the prompt and store it again.",
        json_schema_extra={"since": "1.2"},
    )
    shared: bool = Field(
        default=False,
        description="True for a prompt the server's operator shares with every key: "
        "readable and usable by all, changed or deleted by none (bbt.protocol.shared).",
        json_schema_extra={"since": "1.4"},
    )


class PromptList(_Wire):
    """One page of the prompts the calling key stored, oldest first (metadata only).

    ``GET /v1/prompts?limit=N&cursor=C``: at most ``limit`` prompts (default
    :data:`DEFAULT_PAGE_SIZE`, at most :data:`MAX_PAGE_SIZE`; a server may also end a page
    early to bound its size in bytes), then ``next_cursor`` names where the next page starts
    (None: this was the last). A client from before 1.2 is not sent ``next_cursor`` and sees
    the first page.
    """

    object: Literal["list"] = "list"
    data: list[StoredPrompt]
    next_cursor: str | None = Field(
        default=None,
        description="Pass as ?cursor= for the next page; null on the last page.",
        json_schema_extra={"since": "1.2"},
    )


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
    check_dtype(t.dtype, info, "prompt.dtype")
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
    check_dtype(req.output_dtype, info, "output_dtype", "output dtype")
    # The stored prompt is a population of one: the /v1/logits limits with P = 1.
    check_batch(1, list(req.texts), list(req.candidate_ids), info, shape_field="prompt_id")


def check_text(value: str, field: str) -> None:
    """``value`` can be written as UTF-8 (no lone surrogate, which JSON's ``\\ud800`` escape
    can carry), or ProtocolViolation: such a string could be stored but never sent back."""
    if value.isascii():
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ProtocolViolation(
            f"{field} is not valid Unicode (a lone surrogate at character {exc.start})",
            field=field,
        ) from None


def check_json_value(value: Any, field: str, *, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Refuse free-form JSON that could be stored but not sent back: strings (keys too)
    with lone surrogates, NaN or infinite numbers (Python's JSON reader takes them, strict
    ones do not), and objects or arrays nested more than ``max_depth`` deep.

    Iterative, so a value nested thousands deep is refused, not a RecursionError.
    """
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth + 1 > max_depth:
                raise ProtocolViolation(
                    f"{field} is nested more than {max_depth} levels deep", field=field
                )
            if isinstance(item, dict):
                for key, sub in item.items():
                    if not isinstance(key, str):
                        raise ProtocolViolation(f"{where} has a key that is not a string", where)
                    check_text(key, where)
                    stack.append((sub, f"{where}.{key}", depth + 1))
            else:
                stack.extend((sub, f"{where}.{i}", depth + 1) for i, sub in enumerate(item))
        elif isinstance(item, str):
            check_text(item, where)
        elif isinstance(item, float) and not math.isfinite(item):
            raise ProtocolViolation(f"{where} is NaN or infinite; JSON has no such number", where)
        elif item is not None and not isinstance(item, bool | int | float):
            raise ProtocolViolation(f"{where} is not a JSON value", where)


def encode_cursor(created_at: float, prompt_id: str) -> str:
    """The opaque ``next_cursor`` after the prompt (created_at, id): where the next page
    starts in the list's order. Keyset, not an offset, so deleting or storing prompts
    between pages neither repeats nor skips one."""
    raw = f"{created_at!r}|{prompt_id}".encode()
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """(created_at, id) from :func:`encode_cursor`'s output, or a 422 naming ``cursor``."""
    bad = ProtocolViolation(
        "cursor is not one this server handed out; pass next_cursor from the previous page "
        "as it is, or leave cursor out for the first page",
        field="cursor",
    )
    if not cursor or len(cursor) > 200:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        when, _, prompt_id = raw.partition("|")
        created_at = float(when)
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        raise bad from None
    # Any id, not only the form is_prompt_id accepts: a row written by hand must not leave
    # the pages after it unreachable. The id only ever goes into a bound SQL parameter.
    if not math.isfinite(created_at) or not prompt_id:
        raise bad
    return created_at, prompt_id


def page_limit(value: str | None, default: int, maximum: int) -> int:
    """The page size a ``?limit=`` asks for: ``default`` when absent, clamped to
    ``maximum``; a 422 naming ``limit`` when it is no positive integer."""
    if value is None:
        return min(default, maximum)
    text = value.strip()
    if not text.isdigit() or len(text) > 18 or int(text) < 1:
        raise ProtocolViolation(
            f"limit must be a whole number from 1 to {maximum}; got {value[:20]!r}",
            field="limit",
        )
    return min(int(text), maximum)


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
    "DEFAULT_MAX_RECIPE_BYTES",
    "DEFAULT_MAX_RECIPE_DEPTH",
    "DEFAULT_PAGE_SIZE",
    "MAX_JSON_DEPTH",
    "MAX_LABEL_CHARS",
    "MAX_PAGE_SIZE",
    "PROMPT_ID_PATTERN",
    "PROMPT_REGISTRY_CAPABILITY",
    "PromptCreateRequest",
    "PromptDeleted",
    "PromptList",
    "PromptLogitsRequest",
    "StoredPrompt",
    "check_json_value",
    "check_prompt_create_request",
    "check_prompt_logits_request",
    "check_prompt_shape",
    "check_text",
    "decode_cursor",
    "encode_cursor",
    "is_prompt_id",
    "page_limit",
    "unknown_prompt",
]
