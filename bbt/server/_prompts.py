"""The prompt registry's endpoints, framework-free (``docs/protocol.md``, *Prompt registry*).

:class:`PromptEndpoints` turns parsed requests into answers over a
:class:`~bbt.server.registry.PromptRegistry`; the router of
:class:`~bbt.server._core.ServiceCore` calls it, whichever transport a request came by,
so all answer alike. Every lookup is by (tenant, id): another
key's prompt is a 404, word for word the answer for an id that never existed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol, TypeVar

import numpy as np

from bbt.protocol import (
    ErrorType,
    InitialPromptSpec,
    LogitsRequest,
    LogitsResponse,
    ModelInfo,
    PromptCreateRequest,
    PromptDeleted,
    PromptList,
    PromptLogitsRequest,
    ProtocolViolation,
    SessionOpenRequest,
    StoredPrompt,
    Tensor,
    check_prompt_create_request,
    check_prompt_logits_request,
)
from bbt.protocol.projection import Projection
from bbt.protocol.registry import (
    DEFAULT_MAX_RECIPE_BYTES,
    check_json_value,
    check_prompt_shape,
    check_text,
    decode_cursor,
    encode_cursor,
    page_limit,
    unknown_prompt,
)
from bbt.protocol.sessions import check_session_open, decode_z, recipe_of, resolve_p0
from bbt.protocol.shared import PromptTensor, read_only_prompt
from bbt.protocol.validate import check_prompt_values
from bbt.server._routes import PROMPTS_PATH
from bbt.server.backend import Backend
from bbt.server.registry import (
    DamagedPrompt,
    PromptRecord,
    PromptRegistry,
    RegistryFull,
    RegistryUnavailable,
)
from bbt.server.settings import ServerSettings
from bbt.server.shared_prompts import SHARED_TENANT, is_shared, merged_page

#: Default largest stored recipe (JSON): provenance, not a second copy of the prompt. The
#: bound in force is ``ServerSettings.registry_max_recipe_bytes``.
MAX_RECIPE_BYTES = DEFAULT_MAX_RECIPE_BYTES


def no_registry() -> ProtocolViolation:
    return ProtocolViolation(
        "this server keeps no prompt registry (its models do not list the "
        "'prompt_registry' capability); send the prompt with POST /v1/logits instead",
        error_type=ErrorType.not_found,
    )


def stored_prompt(record: PromptRecord, shared: bool = False) -> StoredPrompt:
    """The wire metadata of ``record``: its attributes of the same names as StoredPrompt's
    fields (``stored_bytes``, the row's share of the key's bounds, stays on the server)."""
    prompt = StoredPrompt.model_validate(record, from_attributes=True)
    return prompt.model_copy(update={"shared": True}) if shared else prompt


class StorageUnavailable(ProtocolViolation):
    """A 503 for a registry whose storage failed; ``retry_after`` (s) when waiting helps."""

    def __init__(self, message: str, retry_after: int | None) -> None:
        super().__init__(message, error_type=ErrorType.unavailable)
        self.retry_after = retry_after


T = TypeVar("T")


@contextmanager
def _storage() -> Iterator[None]:
    """Registry calls inside answer a storage fault with a typed 503 (never a bare 500): a
    client then falls back to sending the prompt itself."""
    try:
        yield
    except RegistryUnavailable as exc:
        raise StorageUnavailable(str(exc), exc.retry_after) from None


def _stored(fn: Callable[..., T], *args: Any) -> T:
    with _storage():
        return fn(*args)


class PromptHost(Protocol):
    """What the registry's endpoints need of the service they belong to.

    :class:`~bbt.server._core.ServiceCore` is one; naming only these members (rather than
    importing the core) keeps the import one-way: ``_core`` uses ``_prompts``, never back.
    """

    backend: Backend
    settings: ServerSettings
    info: ModelInfo

    def logits(self, req: LogitsRequest) -> LogitsResponse: ...


class PromptEndpoints:
    """Store, describe, delete and score stored prompts for one :class:`PromptHost`."""

    def __init__(self, core: PromptHost, registry: PromptRegistry) -> None:
        self.core = core
        self.registry = registry

    def tenant(self, api_key: str | None) -> str:
        return self.registry.tenant_of(api_key)

    def create(self, req: PromptCreateRequest, tenant: str) -> tuple[StoredPrompt, bool]:
        """(metadata, created): created is False when the key had stored these bytes already."""
        settings = self.core.settings
        recipe: dict[str, Any] = dict(req.recipe or {})
        # Free-form input first, before any compute: what is stored must be sendable back,
        # or the row answers 500 and takes the key's whole list down with it.
        check_json_value(recipe, "recipe", max_depth=settings.registry_max_recipe_depth)
        if req.label is not None:
            check_text(req.label, "label")
        if req.projection is None:
            prompt, kind = check_prompt_create_request(req, self.core.info), "tensor"
        else:
            prompt, made = self._project(req)
            kind = "projection"
            recipe.update(made)
        # Measured as stored (compact, ASCII-escaped), so the bound is the bytes kept.
        size = len(json.dumps(recipe, sort_keys=True, separators=(",", ":")))
        if size > settings.registry_max_recipe_bytes:
            raise ProtocolViolation(
                f"recipe takes {size} bytes as JSON; this server keeps at most "
                f"{settings.registry_max_recipe_bytes} bytes",
                field="recipe",
            )
        try:
            with _storage():
                record, created = self.registry.put(
                    tenant, self.core.info.id, prompt, kind=kind, recipe=recipe, label=req.label
                )
        except RegistryFull as exc:
            # 403, not 429: prompts never expire, so waiting frees no room and a client
            # must not retry; deleting prompts does.
            raise ProtocolViolation(str(exc), error_type=ErrorType.permission) from None
        return stored_prompt(record), created

    def _project(self, req: PromptCreateRequest) -> tuple[np.ndarray[Any, Any], dict[str, Any]]:
        """p = A z + p0 from a projection request, as a session would compute it; and what
        to keep of the request as the prompt's recipe. Calls the backend (p0 from token ids
        or text), so the app runs it in the backend's queue."""
        info, core = self.core.info, self.core
        assert req.projection is not None  # the model's validator: projection comes with z
        assert req.z is not None
        spec = req.projection
        p0_spec = req.p0 if req.p0 is not None else InitialPromptSpec()
        opening = SessionOpenRequest(model=req.model, projection=spec, p0=p0_spec)
        check_session_open(opening, info, core.settings.session_limits())
        t = req.z
        if t.dtype not in info.dtypes:
            raise ProtocolViolation(f"dtype {t.dtype!r} is not supported here", field="z.dtype")
        if t.shape != [spec.dim]:
            raise ProtocolViolation(
                f"z must have shape [{spec.dim}] (the projection's d); got {t.shape}",
                field="z.shape",
            )
        z = decode_z(t)
        p0 = resolve_p0(p0_spec, info, spec.n_tokens, core.backend.embed, core.backend.tokenize)
        prompt = Projection(recipe_of(spec)).project(z[None], p0)[0]
        check_prompt_values(prompt, info, "z.data")
        check_prompt_shape(list(prompt.shape), info, "projection")
        if p0_spec.tensor is not None:
            # The served prompt already holds p0's bytes; keep only their digest.
            raw = np.ascontiguousarray(p0, dtype="<f4").tobytes()
            p0_kept: dict[str, Any] = {"tensor_sha256": hashlib.sha256(raw).hexdigest()}
        else:
            p0_kept = p0_spec.model_dump(mode="json", exclude_none=True)
        made = {
            "projection": spec.model_dump(mode="json"),
            "z": t.model_dump(mode="json"),
            "p0": p0_kept,
        }
        return prompt, made

    def list_page(
        self, tenant: str, limit: str | None = None, cursor: str | None = None, shared: bool = True
    ) -> PromptList:
        """One page of ``GET /v1/prompts?limit=&cursor=`` (the raw query values, None when
        absent): at most ``limit`` prompts and about ``registry_max_page_bytes`` of JSON.
        ``shared``: the operator's shared prompts are listed too (clients of 1.4 and later)."""
        settings = self.core.settings
        size = page_limit(limit, settings.registry_page_size, settings.registry_max_page_size)
        after = decode_cursor(cursor) if cursor is not None else None
        bound = settings.registry_max_page_bytes
        rows, more = _stored(merged_page, self.registry, tenant, size, after, bound, shared)
        data = [stored_prompt(r, s) for r, s in rows]
        last = rows[-1][0] if rows else None
        next_cursor = encode_cursor(last.created_at, last.id) if more and last else None
        return PromptList(data=data, next_cursor=next_cursor)

    def list_all(self, tenant: str) -> PromptList:
        """The first page, as a client that names no limit gets it."""
        return self.list_page(tenant)

    def get(self, prompt_id: str, tenant: str) -> StoredPrompt:
        return stored_prompt(*self._find(self.registry.get, tenant, prompt_id))

    def tensor(self, prompt_id: str, tenant: str) -> PromptTensor:
        """``GET /v1/prompts/{id}/tensor`` (1.4): the values of the caller's or a shared prompt."""
        (record, prompt), shared = self._find(self.registry.load, tenant, prompt_id)
        return PromptTensor(
            id=record.id, model=record.model, sha256=record.sha256, shared=shared,
            recipe=dict(record.recipe), tensor=Tensor.from_numpy(prompt, "float32"),
        )  # fmt: skip

    @staticmethod
    def _find(fn: Callable[[str, str], T | None], tenant: str, prompt_id: str) -> tuple[T, bool]:
        """(``fn(tenant, prompt_id)`` from the registry, False), else the shared prompt of
        that id (True): a damaged row is the caller's 422 on ``prompt_id``, none (or
        another tenant's) a 404."""
        try:
            found = _stored(fn, tenant, prompt_id)
            shared = found is None and tenant != SHARED_TENANT
            if shared:
                found = _stored(fn, SHARED_TENANT, prompt_id)
        except DamagedPrompt as exc:
            raise ProtocolViolation(str(exc), field="prompt_id") from None
        if found is None:
            raise unknown_prompt(prompt_id)
        return found, shared

    def delete(self, prompt_id: str, tenant: str) -> PromptDeleted:
        if not _stored(self.registry.delete, tenant, prompt_id):
            if _stored(is_shared, self.registry, prompt_id):
                raise read_only_prompt(prompt_id)
            raise unknown_prompt(prompt_id)
        return PromptDeleted(id=prompt_id)

    def logits(self, prompt_id: str, req: PromptLogitsRequest, tenant: str) -> LogitsResponse:
        """Logits [1, B, C] of the texts under the stored prompt, as POST /v1/logits gives."""
        info = self.core.info
        check_prompt_logits_request(req, info)
        (record, prompt), _ = self._find(self.registry.load, tenant, prompt_id)
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
    "StorageUnavailable",
    "no_registry",
    "stored_prompt",
]
