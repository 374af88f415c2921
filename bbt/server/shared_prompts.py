"""Shared prompts (protocol 1.4): what the operator publishes in the registry for every key.

A shared prompt is an ordinary row of the :class:`~bbt.server.registry.PromptRegistry`
stored under the reserved tenant :data:`SHARED_TENANT` (a key's tenant is a 64-digit HMAC,
or ``"anonymous"``, so no key can ever be it). Only the operator writes there, through the
registry file itself (:func:`publish`, ``bbt registry publish``); the HTTP endpoints read it
beside the caller's own rows and refuse to change it (:mod:`bbt.protocol.shared`).

Lists merge the two tenants in the registry's order (oldest first, ties by id), so a
client's keyset cursor pages through both without repeating or skipping a row.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from bbt.protocol.shared import SHARED_FIELDS, SHARED_KIND
from bbt.server.registry import DamagedPrompt, PromptRecord, PromptRegistry

#: The tenant that holds shared prompts. Not a hex digest of 64 characters, not "anonymous".
SHARED_TENANT = "shared"


def publish(
    registry: PromptRegistry,
    prompt: np.ndarray[Any, Any],
    *,
    model: str,
    metadata: Mapping[str, Any],
    label: str | None = None,
) -> tuple[PromptRecord, bool]:
    """Store ``prompt`` (for model id ``model``) as shared, with its provenance
    (``metadata``: the keys of :data:`~bbt.protocol.shared.SHARED_FIELDS`; ``fingerprint``
    is required): (record, True when new). Publishing the same prompt again is a no-op
    that answers the same record."""
    if not isinstance(metadata.get("fingerprint"), str) or not metadata["fingerprint"]:
        raise ValueError("a shared prompt needs its model fingerprint")
    recipe = {k: metadata[k] for k in SHARED_FIELDS if metadata.get(k) is not None}
    accuracy = recipe.get("source_accuracy")
    if isinstance(accuracy, float) and not math.isfinite(accuracy):
        del recipe["source_accuracy"]  # JSON has no NaN; an unknown accuracy is left out
    return registry.put(SHARED_TENANT, model, prompt, kind=SHARED_KIND, recipe=recipe, label=label)


def is_shared(registry: PromptRegistry, prompt_id: str) -> bool:
    """Whether ``prompt_id`` names a shared prompt (a damaged one too)."""
    try:
        return registry.get(SHARED_TENANT, prompt_id) is not None
    except DamagedPrompt:
        return True


def _key(record: PromptRecord) -> tuple[float, str]:
    return record.created_at, record.id


def merged_page(
    registry: PromptRegistry,
    tenant: str,
    limit: int,
    after: tuple[float, str] | None = None,
    max_bytes: int | None = None,
    shared: bool = True,
) -> tuple[list[tuple[PromptRecord, bool]], bool]:
    """One page of ``tenant``'s prompts and (``shared``) the shared ones, merged in the
    list's order: ([(record, shared)], whether more follow).

    Each tenant is read from the same cursor; a tenant whose read stopped early (``limit``
    rows or ``max_bytes``) bounds the page at its last row, so the next page, read from the
    last row returned, misses nothing of it.
    """
    own, own_more = registry.page(tenant, limit, after=after, max_bytes=max_bytes)
    if not shared or tenant == SHARED_TENANT:
        return [(r, tenant == SHARED_TENANT) for r in own], own_more
    common, common_more = registry.page(SHARED_TENANT, limit, after=after, max_bytes=max_bytes)
    rows = sorted([(r, False) for r in own] + [(r, True) for r in common], key=lambda x: _key(x[0]))
    bounds = [_key(part[-1]) for part, more in ((own, own_more), (common, common_more)) if more]
    more = bool(bounds)
    if bounds:
        bound = min(bounds)
        rows = [row for row in rows if _key(row[0]) <= bound]
    if len(rows) > limit:
        rows, more = rows[:limit], True
    return rows, more


__all__ = ["SHARED_TENANT", "is_shared", "merged_page", "publish"]
