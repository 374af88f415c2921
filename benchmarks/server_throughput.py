"""Throughput of the reference server: one population request vs one candidate per request.

Starts the embedded server (HTTP on loopback, uvicorn in a thread, the real MiniLM) and sends
the same work three ways through :class:`bbt.client.Client`:

- ``population``: one request with P prompts x B texts (the BBT call: a whole CMA-ES
  generation at once), run as a few large forward passes;
- ``per-candidate``: P requests, one prompt x B texts each;
- ``per-sequence``: P x B requests, one prompt x one text each (``--skip-per-sequence`` to
  leave it out).

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 .venv/bin/python \\
        benchmarks/server_throughput.py --dtype bfloat16 --threads 2

Prints sequences per second (median of ``--repeats``) and writes
``benchmarks/results/throughput_<dtype>.json``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import quality_data  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))

from _machine import write_json  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Server throughput: population vs per-candidate.")
    ap.add_argument("--population", type=int, default=20, help="P")
    ap.add_argument("--batch", type=int, default=32, help="B")
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--task", choices=["sst2", "agnews"], default="sst2")
    ap.add_argument("--skip-per-sequence", action="store_true")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        args.population, args.batch, args.repeats, args.skip_per_sequence = 2, 2, 1, True

    from bbt.client import Client
    from bbt.server.embedded import embedded_server

    template = "{text} . It was [MASK] ." if args.task == "sst2" else "[MASK] News: {text}"
    rows = quality_data.heldout_rows(args.task)[: args.batch]
    texts = [template.replace("{text}", r.text) for r in rows]
    results: dict[str, Any] = {}
    with (
        embedded_server(
            dtype=args.dtype, num_threads=args.threads, token_budget=args.token_budget
        ) as url,
        Client(url, env_file=None) as client,
    ):
        info = client.model_info()
        cand = [i[0] for i in client.tokenize(["bad", "great"]).ids]
        rng = np.random.default_rng(0)
        prompts = (
            rng.standard_normal((args.population, args.n_tokens, info.hidden_size))
            * info.embedding_std
        ).astype(np.float32)
        work = args.population * len(texts)
        client.logits(prompts[:1], texts[:2], cand)  # warm-up

        def population() -> np.ndarray[Any, Any]:
            return client.logits(prompts, texts, cand)

        def per_candidate() -> np.ndarray[Any, Any]:
            return np.concatenate(
                [client.logits(prompts[i : i + 1], texts, cand) for i in range(args.population)]
            )

        def per_sequence() -> np.ndarray[Any, Any]:
            out = np.empty((args.population, len(texts), len(cand)), np.float32)
            for i in range(args.population):
                for j, text in enumerate(texts):
                    out[i, j] = client.logits(prompts[i : i + 1], [text], cand)[0, 0]
            return out

        modes = {"population": population, "per-candidate": per_candidate}
        if not args.skip_per_sequence:
            modes["per-sequence"] = per_sequence
        reference: np.ndarray[Any, Any] | None = None
        for name, fn in modes.items():
            times = []
            requests_before = client.usage.requests
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = fn()
                times.append(time.perf_counter() - t0)
            requests = (client.usage.requests - requests_before) // args.repeats
            if reference is None:
                reference = out
            diff = float(np.abs(out - reference).max())
            med = statistics.median(times)
            results[name] = {
                "seconds_median": med,
                "seconds": times,
                "sequences_per_second": work / med,
                "requests": requests,
                "max_abs_diff_vs_population": diff,
            }
            print(
                f"{name:>14}: {work / med:8.1f} sequences/s  ({med:.2f}s for {work} sequences "
                f"in {requests} request(s); max |diff| vs population {diff:.2e})",
                flush=True,
            )
    base = results["population"]["sequences_per_second"]
    for r in results.values():
        r["speedup_of_population"] = base / r["sequences_per_second"]
    record = {
        "command": " ".join(
            ["benchmarks/server_throughput.py", *(argv if argv is not None else sys.argv[1:])]
        ),
        "args": vars(args),
        "model": info.id,
        "machine": {"platform": platform.platform(), "processor": platform.processor()},
        "results": results,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    smoke = "_smoke" if args.smoke else ""
    write_json(Path(args.out_dir) / f"throughput_{args.dtype}{smoke}.json", record)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
