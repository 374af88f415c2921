"""The client against a live mock that fails: 30% 503s and 10% dropped connections.

    .venv/bin/python benchmarks/fault_run.py [--calls 50] [--rate-503 0.3] [--rate-drop 0.1]

Runs the same sequence of ``Client.logits`` calls (P=20 prompts of n=5 tokens on B=32
texts each) against a fault-free mock and a faulty one, both uvicorn on loopback, and
prints the usage counters and whether every result was bitwise identical.
"""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

import numpy as np

from bbt.client import Client, UsageStats
from bbt.server import MOCK_MASK_TOKEN, MOCK_TEMPLATE, MOCK_VERBALIZER, FaultConfig, MockBackend
from bbt.server.mock import sample_mock_dataset
from bbt.testing import live_server


def run(
    faults: FaultConfig | None, calls: int
) -> tuple[list[np.ndarray[Any, Any]], UsageStats, float]:
    texts = [
        MOCK_TEMPLATE.format(text=t, mask=MOCK_MASK_TOKEN) for t, _ in sample_mock_dataset(32, 0)
    ]
    rng = np.random.default_rng(0)
    outs = []
    with live_server(MockBackend(), faults=faults) as server:
        t0 = time.perf_counter()
        # Backoff capped at 10 ms: the point is correctness under faults, not waiting.
        with Client(
            server.base_url, env_file=None, max_retries=12, max_retry_wait=0.01, timeout=10
        ) as client:
            cands = [ids[0] for ids in client.tokenize(list(MOCK_VERBALIZER)).ids]
            h = client.model_info().hidden_size
            for _ in range(calls):
                prompts = (rng.standard_normal((20, 5, h)) * 0.05).astype(np.float32)
                outs.append(client.logits(prompts, texts, cands))
            usage = client.usage.copy()
        elapsed = time.perf_counter() - t0
    return outs, usage, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="logits calls (20 prompts each)")
    parser.add_argument("--rate-503", type=float, default=0.3)
    parser.add_argument("--rate-drop", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="fault sequence seed")
    parser.add_argument("--smoke", action="store_true", help="3 calls (seconds), for CI")
    args = parser.parse_args()
    if args.smoke:
        args.calls = 3
    # The retries and uvicorn's notes on dropped connections are expected; keep them quiet.
    logging.basicConfig(level=logging.CRITICAL)

    clean, clean_usage, clean_s = run(None, args.calls)
    faults = FaultConfig(rate_503=args.rate_503, rate_drop=args.rate_drop, seed=args.seed)
    faulty, usage, faulty_s = run(faults, args.calls)
    identical = len(clean) == len(faulty) and all(
        a.tobytes() == b.tobytes() for a, b in zip(clean, faulty, strict=True)
    )
    print(f"faults: {args.rate_503:.0%} 503, {args.rate_drop:.0%} dropped connections")
    print(f"logits calls completed: {len(faulty)}/{args.calls}")
    print(
        f"fault-free: requests={clean_usage.requests} retries={clean_usage.retries} "
        f"({clean_s:.2f} s)"
    )
    print(
        f"faulty:     requests={usage.requests} retries={usage.retries} "
        f"calls(prompts)={usage.calls} bytes_sent={usage.bytes_sent:,} "
        f"bytes_received={usage.bytes_received:,} ({faulty_s:.2f} s)"
    )
    print(f"identical={identical}")


if __name__ == "__main__":
    main()
