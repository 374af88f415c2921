"""The prompt registry's endpoints, framework-free (``docs/protocol.md``, *Prompt registry*).

:class:`PromptEndpoints` turns parsed requests into answers over a
:class:`~bbt.server.registry.PromptRegistry`; the FastAPI app and
:meth:`ServiceCore.handle <bbt.server._core.ServiceCore.handle>` (the in-process
transports) both call it, so they answer alike. Every lookup is by (tenant, id): another
key's prompt is a 404, word for word the answer for an id that never existed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from bbt.protocol import (
    API_PREFIX,
    ErrorType,
    LogitsRequest,
    LogitsResponse,
    PromptCreateRequest,
    PromptDeleted,
    PromptLogitsRequest,
    ProtocolViolation,
    StoredPrompt,
    Tensor,
    check_prompt_create_request,
    check_prompt_logits_request,
)
from bbt.protocol._registry import check_prompt_shape, unknown_prompt
from bbt.server.registry import (
    DamagedPrompt,
    PromptRecord,
    PromptRegistry,
    RegistryFull,
)

if TYPE_CHECKING:
    from bbt.server._core import ServiceCore

#: Path of the collection; a prompt is ``{PROMPTS_PATH}/{id}``.
PROMPTS_PATH = f"{API_PREFIX}/prompts"
# Anything after the collection path: an id segment, optionally followed by "/logits".
_ROUTE_RE = re.compile(rf"^{re.escape(PROMPTS_PATH)}(?:/(?P<id>[^/]+)(?P<logits>/logits)?)?/?$")


@dataclass(frozen=True)
class PromptRoute:
    """Which registry endpoint a path names."""

    action: str  # "collection", "item" or "logits"
    prompt_id: str | None

    @property
    def allowed(self) -> list[str]:
        return {"collection": ["POST"], "item": ["DELETE", "GET"], "logits": ["POST"]}[self.action]


def match_route(path: str) -> PromptRoute | None:
    """The registry endpoint ``path`` names, or None when it is not under /v1/prompts."""
    m = _ROUTE_RE.match(path)
    if m is None:
        return None
    if m.group("id") is None:
        return PromptRoute("collection", None)
    return PromptRoute("logits" if m.group("logits") else "item", m.group("id"))


def no_registry() -> ProtocolViolation:
    return ProtocolViolation(
        "this server keeps no prompt registry (its models do not list the "
        "'prompt_registry' capability); send the prompt with POST /v1/logits instead",
        error_type=ErrorType.not_found,
    )


def stored_prompt(record: PromptRecord) -> StoredPrompt:
    return StoredPrompt(
        id=record.id,
        model=record.model,
        kind=record.kind,
        shape=list(record.shape),
        nbytes=record.nbytes,
        sha256=record.sha256,
        label=record.label,
        recipe=dict(record.recipe),
        created_at=record.created_at,
    )


class PromptEndpoints:
    """Store, describe, delete and score stored prompts for one :class:`ServiceCore`."""

    def __init__(self, core: ServiceCore, registry: PromptRegistry) -> None:
        self.core = core
        self.registry = registry

    def tenant(self, api_key: str | None) -> str:
        return self.registry.tenant_of(api_key)

    def create(self, req: PromptCreateRequest, tenant: str) -> tuple[StoredPrompt, bool]:
        """(metadata, created): created is False when the key had stored these bytes already."""
        prompt = check_prompt_create_request(req, self.core.info)
        recipe: dict[str, Any] = dict(req.recipe or {})
        try:
            record, created = self.registry.put(
                tenant, self.core.info.id, prompt, kind="tensor", recipe=recipe, label=req.label
            )
        except RegistryFull as exc:
            # 403, not 429: prompts never expire, so waiting frees no room and a client
            # must not retry; deleting prompts does.
            raise ProtocolViolation(str(exc), error_type=ErrorType.permission) from None
        return stored_prompt(record), created

    def get(self, prompt_id: str, tenant: str) -> StoredPrompt:
        try:
            record = self.registry.get(tenant, prompt_id)
        except DamagedPrompt as exc:
            raise ProtocolViolation(str(exc), field="prompt_id") from None
        if record is None:
            raise unknown_prompt(prompt_id)
        return stored_prompt(record)

    def delete(self, prompt_id: str, tenant: str) -> PromptDeleted:
        if not self.registry.delete(tenant, prompt_id):
            raise unknown_prompt(prompt_id)
        return PromptDeleted(id=prompt_id)

    def logits(self, prompt_id: str, req: PromptLogitsRequest, tenant: str) -> LogitsResponse:
        """Logits [1, B, C] of the texts under the stored prompt, as POST /v1/logits gives."""
        info = self.core.info
        check_prompt_logits_request(req, info)
        try:
            found = self.registry.load(tenant, prompt_id)
        except DamagedPrompt as exc:
            raise ProtocolViolation(str(exc), field="prompt_id") from None
        if found is None:
            raise unknown_prompt(prompt_id)
        record, prompt = found
        if record.model != info.id:
            raise ProtocolViolation(
                f"prompt {prompt_id} was stored for model {record.model!r}; this server now "
                f"serves {info.id!r}",
                field="prompt_id",
            )
        try:
            check_prompt_shape(list(prompt.shape), info, "prompt_id")
        except ProtocolViolation as exc:
            raise ProtocolViolation(
                f"stored prompt {prompt_id} cannot be served by this model: {exc.message}",
                field="prompt_id",
            ) from None
        # The same path as POST /v1/logits from here on: the same checks, the same backend
        # call, the same answer. Re-encoding costs a fraction of a millisecond at paper scale.
        full = LogitsRequest(
            model=req.model,
            prompts=Tensor.from_numpy(prompt[None], "float32"),
            texts=list(req.texts),
            candidate_ids=list(req.candidate_ids),
            output_dtype=req.output_dtype,
        )
        return self.core.logits(full)


__all__ = [
    "PROMPTS_PATH",
    "PromptEndpoints",
    "PromptRoute",
    "match_route",
    "no_registry",
    "stored_prompt",
]
