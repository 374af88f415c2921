"""Protocol 1.4, shared prompts: prompts the server's operator publishes for every key.

A provider pre-trains prompts with gradients (``bbt pretrain``) and publishes them in its
prompt registry (``bbt registry publish``) as *shared*: every key sees them in
``GET /v1/prompts`` (marked ``"shared": true``), reads their metadata, scores texts under
them by id and fetches their values to start a run from (``bbt tune --init prompt:ID``);
no key can change or delete them (403). A server offers this when its model lists the
capability ``"shared_prompts"`` (only to clients that announce 1.4 or later).

Endpoint added in 1.4 (see docs/protocol.md, *Shared prompts*)::

    GET /v1/prompts/{id}/tensor   -> PromptTensor   (the prompt's values; own or shared)

A shared prompt's ``recipe`` holds its provenance under the keys of :data:`SHARED_FIELDS`
(source task, model fingerprint, tokens, steps, source accuracy).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from bbt.protocol._models import ErrorType, _Wire
from bbt.protocol._tensor import Tensor
from bbt.protocol._version import is_at_least
from bbt.protocol.registry import PROMPT_REGISTRY_CAPABILITY
from bbt.protocol.validate import ProtocolViolation

#: Capability a model lists when its registry serves shared prompts and their tensors.
SHARED_PROMPTS_CAPABILITY = "shared_prompts"
#: What a model with a prompt registry lists (since 1.4, the registry shares prompts).
REGISTRY_CAPABILITIES = (PROMPT_REGISTRY_CAPABILITY, SHARED_PROMPTS_CAPABILITY)
#: The protocol version that added shared prompts.
SHARED_SINCE = "1.4"
#: The ``kind`` of a published prompt.
SHARED_KIND = "pretrained"
#: What a shared prompt's recipe records about where it came from.
SHARED_FIELDS: tuple[str, ...] = (
    "source_task",
    "fingerprint",
    "tokens",
    "steps",
    "source_accuracy",
)


class PromptTensor(_Wire):
    """``GET /v1/prompts/{id}/tensor``: a stored prompt's values, for a client to start
    from. ``sha256`` is the registry's digest of the float32 bytes, checked on arrival."""

    id: str
    object: Literal["prompt.tensor"] = "prompt.tensor"
    model: str
    sha256: str = Field(description="SHA-256 (hex) of the prompt's float32 little-endian bytes.")
    shared: bool = Field(default=False, description="A prompt the operator shares (read-only).")
    recipe: dict[str, Any] = Field(default_factory=dict)
    tensor: Tensor = Field(description="The prompt, shape [n, H] (or [L, n, H]: deep), float32.")


def lists_shared(version: str) -> bool:
    """Whether an answer in protocol ``version`` lists shared prompts (older clients would
    take them for their own)."""
    return is_at_least(version, SHARED_SINCE)


def read_only_prompt(prompt_id: str) -> ProtocolViolation:
    """The 403 for a key that tries to delete (or otherwise change) a shared prompt."""
    return ProtocolViolation(
        f"prompt {prompt_id} is shared by this server's operator and read-only: no API key "
        "can change or delete it (store a copy under your key to have one of your own)",
        field="prompt_id",
        error_type=ErrorType.permission,
    )


__all__ = [
    "REGISTRY_CAPABILITIES",
    "SHARED_FIELDS",
    "SHARED_KIND",
    "SHARED_PROMPTS_CAPABILITY",
    "SHARED_SINCE",
    "PromptTensor",
    "lists_shared",
    "read_only_prompt",
]
