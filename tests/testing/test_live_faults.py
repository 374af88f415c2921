"""The real client against a live mock on loopback that fails 40% of its requests.

30% of /v1 requests answer 503 and 10% drop the connection mid-response; the client's
retries (backoff capped to milliseconds here) must make every call complete with logits
bitwise identical to a fault-free server's, and count the retries it needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bbt.client import Client
from bbt.server import MOCK_MASK_TOKEN, MOCK_TEMPLATE, MOCK_VERBALIZER, FaultConfig
from bbt.server.mock import sample_mock_dataset

CALLS = 12
FAULTS = FaultConfig(rate_503=0.3, rate_drop=0.1, seed=7)


def _run(url: str) -> tuple[list[np.ndarray[Any, Any]], Client]:
    texts = [
        MOCK_TEMPLATE.format(text=t, mask=MOCK_MASK_TOKEN) for t, _ in sample_mock_dataset(16, 3)
    ]
    rng = np.random.default_rng(0)
    client = Client(url, env_file=None, max_retries=12, max_retry_wait=0.005, timeout=10)
    with client:
        cands = [ids[0] for ids in client.tokenize(list(MOCK_VERBALIZER)).ids]
        h = client.model_info().hidden_size
        outs = []
        for _ in range(CALLS):
            prompts = (rng.standard_normal((20, 5, h)) * 0.05).astype(np.float32)
            outs.append(client.logits(prompts, texts, cands))
    return outs, client


def test_every_call_completes_identically_despite_faults(
    live_mock_server_factory: Callable[..., str],
) -> None:
    clean, clean_client = _run(live_mock_server_factory())
    faulty, faulty_client = _run(live_mock_server_factory(faults=FAULTS))
    assert len(faulty) == CALLS
    for a, b in zip(clean, faulty, strict=True):
        assert a.tobytes() == b.tobytes()
    assert clean_client.usage.retries == 0
    usage = faulty_client.usage
    assert usage.retries > 0
    assert usage.calls == clean_client.usage.calls == CALLS * 20
    assert usage.requests == clean_client.usage.requests + usage.retries
