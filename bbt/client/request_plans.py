"""The requests one ``logits`` call sends, whatever the engine: the dry run's one planner.

Protocol v1 clients split a call with :func:`bbt.client.planning.plan_logits`; an engine
adapter with its own wire format (vLLM's OpenAI API, SGLang's ``/generate``) splits it its
own way. An adapter that
declares :class:`PlansLogits` lists the requests it would send, from the same code its
``logits`` sends them with; :func:`planned_requests` asks it, and otherwise plans as the
protocol v1 client does. ``bbt tune --dry-run`` counts requests and bytes through here only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bbt.client.planning import plan_logits
from bbt.protocol import DType, ModelInfo

__all__ = ["PlannedRequest", "PlansLogits", "planned_requests"]


@dataclass(frozen=True)
class PlannedRequest:
    """One request of a P x B ``logits`` call: prompts [p0:p1] on texts [b0:b1]."""

    p0: int
    p1: int
    b0: int
    b1: int
    #: The request body as it is sent; an upper bound where its length depends on the
    #: prompt's values (SGLang's embeddings are JSON numbers, counted at their widest).
    body_bytes: int
    output_dtype: DType  # the element type of the logits that come back

    @property
    def rows_sent(self) -> int:
        return self.p1 - self.p0


@runtime_checkable
class PlansLogits(Protocol):
    """An engine adapter that plans its own ``logits`` requests (no I/O beyond what the
    call itself would do first, e.g. tokenising the texts once)."""

    def plan_logits_requests(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> list[PlannedRequest]: ...


def planned_requests(
    service: object,
    info: ModelInfo,
    prompts: np.ndarray[Any, Any],
    texts: Sequence[str],
    candidate_ids: Sequence[int],
    dtype: DType,
) -> list[PlannedRequest]:
    """The requests ``service.logits(prompts, texts, candidate_ids)`` sends, in order."""
    if isinstance(service, PlansLogits):
        return service.plan_logits_requests(prompts, texts, candidate_ids)
    return [
        PlannedRequest(
            c.p0,
            c.p1,
            c.b0,
            c.b1,
            len(c.request.model_dump_json().encode()),
            c.request.output_dtype,
        )
        for c in plan_logits(info, prompts, texts, candidate_ids, dtype)
    ]
