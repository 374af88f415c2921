"""``planned_requests``: protocol v1's split for a plain client, the adapter's own plan for
an engine adapter that declares :class:`PlansLogits`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bbt.client.planning import plan_logits
from bbt.client.request_plans import PlannedRequest, PlansLogits, planned_requests
from bbt.server.mock import MockBackend

TEXTS = [f"text number {i} [MASK]" for i in range(10)]


def test_a_protocol_v1_client_is_planned_by_plan_logits() -> None:
    limits = MockBackend(hidden_size=8).info.limits.model_copy(
        update={"max_prompts_per_request": 3, "max_texts_per_request": 4}
    )
    info = MockBackend(hidden_size=8, limits=limits).info
    prompts = np.zeros((5, 2, 8), dtype=np.float32)
    got = planned_requests(object(), info, prompts, TEXTS, [1, 2], "float16")
    chunks = plan_logits(info, prompts, TEXTS, [1, 2], "float16")
    assert len(got) == len(chunks) == 2 * 3
    for r, c in zip(got, chunks, strict=True):
        assert (r.p0, r.p1, r.b0, r.b1) == (c.p0, c.p1, c.b0, c.b1)
        assert r.body_bytes == len(c.request.model_dump_json().encode())
        assert r.output_dtype == c.request.output_dtype


class _Engine:
    """An adapter that sends one request per prompt, whatever the server's limits."""

    def plan_logits_requests(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> list[PlannedRequest]:
        return [
            PlannedRequest(i, i + 1, 0, len(texts), 100, "float32") for i in range(len(prompts))
        ]


def test_an_engine_adapter_is_asked_for_its_own_plan() -> None:
    engine = _Engine()
    assert isinstance(engine, PlansLogits)
    info = MockBackend(hidden_size=8).info
    got = planned_requests(engine, info, np.zeros((3, 2, 8)), TEXTS, [1], "float32")
    assert [(r.p0, r.p1, r.b1, r.body_bytes) for r in got] == [
        (i, i + 1, 10, 100) for i in range(3)
    ]
