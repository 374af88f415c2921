"""How long the mock backend takes for a paper-scale BBT request (H=1024, P=20, n=50, B=32).

    .venv/bin/python benchmarks/mock_latency.py [--repeat 30]

Times ``MockBackend.logits`` alone (the backend's share of a request), then the whole
in-process HTTP path (JSON + base64 both ways, validation, the core) through
``bbt.testing.CoreTransport``, and prints the medians.
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import numpy as np

from bbt.protocol import LogitsRequest, LogitsResponse, Tensor
from bbt.server import MOCK_MASK_TOKEN, MOCK_TEMPLATE, MOCK_VERBALIZER, MockBackend
from bbt.server.mock import sample_mock_dataset
from bbt.testing import CoreTransport


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--smoke", action="store_true", help="2 repeats (seconds), for CI")
    args = parser.parse_args()
    if args.smoke:
        args.repeat = 2

    h, p, n, b = 1024, 20, 50, 32
    backend = MockBackend(hidden_size=h)
    texts = [
        MOCK_TEMPLATE.format(text=t, mask=MOCK_MASK_TOKEN) for t, _ in sample_mock_dataset(b, 0)
    ]
    ids, _ = backend.tokenize(list(MOCK_VERBALIZER))
    cands = np.array([i[0] for i in ids])
    rng = np.random.default_rng(0)
    prompts = (rng.standard_normal((p, n, h)) * backend.info.embedding_std).astype(np.float32)

    backend.logits(prompts, texts, cands)  # warm-up
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        backend.logits(prompts, texts, cands)
        times.append(time.perf_counter() - t0)

    body = LogitsRequest(
        model=backend.info.id,
        prompts=Tensor.from_numpy(prompts),
        texts=texts,
        candidate_ids=cands.tolist(),
    ).model_dump_json()
    http = httpx.Client(transport=CoreTransport(backend), base_url="http://mock")
    full = []
    for _ in range(max(3, args.repeat // 3)):
        t0 = time.perf_counter()
        r = http.post("/v1/logits", content=body, headers={"content-type": "application/json"})
        LogitsResponse.model_validate_json(r.content).logits.to_numpy()
        full.append(time.perf_counter() - t0)
    http.close()

    print(f"paper-scale request: H={h} P={p} n={n} B={b} ({p * b} sequences)")
    print(f"request body: {len(body):,} bytes (float32)")
    print(
        f"MockBackend.logits: median {statistics.median(times) * 1e3:.1f} ms, "
        f"min {min(times) * 1e3:.1f} ms over {len(times)} runs"
    )
    print(
        f"whole request in-process (JSON, base64, checks, backend): median "
        f"{statistics.median(full) * 1e3:.1f} ms over {len(full)} runs"
    )


if __name__ == "__main__":
    main()
