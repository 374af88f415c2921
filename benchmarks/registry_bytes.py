"""Bytes uploaded per prediction call: the prompt sent with each call vs named by its id.

Paper scale: a tuned prompt of n=50 tokens in RoBERTa-large's H=1024 (float32: 204,800
bytes, 273,068 in base64), a ``TunedPrompt.predict`` call on B=32 SST-2-like texts. The
service is the mock model at H=1024 behind the server's own core (in-process transport, a
prompt registry in memory), so the bodies are byte for byte what ``bbt.Client`` sends over
HTTP (headers aside). Prints one table; the figures are counted, not timed.

    python benchmarks/registry_bytes.py
"""

from __future__ import annotations

import _common
import numpy as np

from bbt.client import Client
from bbt.server.local import ServiceCore
from bbt.server.mock import MockBackend
from bbt.server.registry import PromptRegistry
from bbt.server.settings import ServerSettings
from bbt.testing import CoreTransport
from bbt.tuner import TunedPrompt, get_preset

N, H, B = 50, 1024, 32
CALLS = 5


def measure() -> dict[str, dict[str, float]]:
    backend = MockBackend(hidden_size=H)
    registry = PromptRegistry(":memory:")
    core = ServiceCore(backend, ServerSettings(api_keys=[]), registry)
    prompt = (np.random.default_rng(0).standard_normal((N, H)) * 0.1).astype(np.float32)
    texts = _common.sentences(B)
    out: dict[str, dict[str, float]] = {}
    for path, use_registry in (("upload", False), ("id", True)):
        with Client("http://bench.test", transport=CoreTransport(core), env_file=None) as client:
            tp = TunedPrompt(prompt, get_preset("mock"), backend.info.id, use_registry=use_registry)
            tp.bind(client)
            first = client.usage.copy()
            tp.predict(texts)  # the id path stores the prompt here, once
            first_used = client.usage - first
            before = client.usage.copy()
            for _ in range(CALLS):
                tp.predict(texts)
            used = client.usage - before
            assert tp.last_path == path, (tp.last_path, path)
            out[path] = {
                "first_call_bytes_up": first_used.bytes_sent,
                "first_call_requests": first_used.requests,
                "bytes_up_per_call": used.bytes_sent / CALLS,
                "requests_per_call": used.requests / CALLS,
                "bytes_down_per_call": used.bytes_received / CALLS,
            }
    registry.close()
    return out


def main() -> None:
    figures = measure()
    up, by_id = figures["upload"], figures["id"]
    print(f"TunedPrompt.predict, n={N} x H={H} float32 prompt, B={B} texts per call")
    print(f"{'path':<8} {'bytes up/call':>14} {'requests/call':>14} {'first call up':>14}")
    for name, f in figures.items():
        print(
            f"{name:<8} {f['bytes_up_per_call']:>14,.0f} {f['requests_per_call']:>14.0f} "
            f"{f['first_call_bytes_up']:>14,.0f}"
        )
    ratio = up["bytes_up_per_call"] / by_id["bytes_up_per_call"]
    print(f"by id uploads {ratio:.0f}x fewer bytes per call (texts and JSON only)")


if __name__ == "__main__":
    main()
