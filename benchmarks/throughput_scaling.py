"""Server throughput on this CPU: one population request against one request per candidate,
and how sequences per second scale with the batch B and the prompt length n.

The embedded default model (MiniLM, bbt's default head, bfloat16) behind the real app on a
loopback port, called through ``bbt.Client`` (HTTP and encoding included). A *sequence* is
one (prompt, text) pair scored; a population request of P prompts x B texts is P * B of them.
Texts: real SST-2 sentences in the paper's template.

Usage::

    nice -n 10 .venv/bin/python benchmarks/throughput_scaling.py
    .venv/bin/python benchmarks/throughput_scaling.py --smoke      # tiny, for CI

Prints tables and writes ``benchmarks/results/throughput_scaling.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common


def measure(
    client: Any, hidden: int, texts: list[str], cand: list[int], p: int, n: int, repeats: int
) -> dict[str, float]:
    """Best-of-``repeats`` sequences/second, batched (one request) and one per candidate."""
    rng = np.random.default_rng(0)
    prompts = rng.normal(0.0, 0.05, size=(p, n, hidden)).astype(np.float32)
    batched, single = [], []
    for _ in range(repeats):
        t = time.perf_counter()
        client.logits(prompts, texts, cand)
        batched.append(time.perf_counter() - t)
        t = time.perf_counter()
        for i in range(p):
            client.logits(prompts[i : i + 1], texts, cand)
        single.append(time.perf_counter() - t)
    seqs = p * len(texts)
    return {
        "P": p,
        "B": len(texts),
        "n": n,
        "sequences": seqs,
        "batched_seconds": min(batched),
        "per_candidate_seconds": min(single),
        "batched_seq_per_s": seqs / min(batched),
        "per_candidate_seq_per_s": seqs / min(single),
        "speedup": min(single) / min(batched),
    }


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    print(f"\n{title}")
    print(
        "| P | B | n | sequences | one request: seq/s | one request per candidate: seq/s "
        "| speed-up |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['P']} | {r['B']} | {r['n']} | {r['sequences']} | "
            f"{r['batched_seq_per_s']:.1f} | {r['per_candidate_seq_per_s']:.1f} | "
            f"{r['speedup']:.2f}x |"
        )


def plot(path: Path, by_b: list[dict[str, Any]], by_n: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), dpi=100)
    for ax, rows, key, label in (
        (axes[0], by_b, "B", "texts per request B"),
        (axes[1], by_n, "n", "prompt tokens n"),
    ):
        x = [r[key] for r in rows]
        ax.plot(x, [r["batched_seq_per_s"] for r in rows], marker="o", label="one request (P x B)")
        ax.plot(
            x,
            [r["per_candidate_seq_per_s"] for r in rows],
            marker="s",
            label="one request per candidate",
        )
        ax.set_xlabel(label)
        ax.set_ylabel("sequences / s")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("embedded MiniLM on this CPU, via HTTP", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32, 64])
    ap.add_argument("--n-values", type=int, nargs="+", default=[1, 10, 25, 50])
    ap.add_argument("--n", type=int, default=10, help="prompt length for the B sweep")
    ap.add_argument("--b", type=int, default=32, help="batch for the n sweep")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out-dir", type=Path, default=_common.RESULTS)
    ap.add_argument("--name", default="throughput_scaling")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        args.popsize, args.batches, args.n_values, args.n, args.b = 2, [1, 2], [1, 2], 1, 2
        args.name = args.name if args.name != "throughput_scaling" else "throughput_scaling_smoke"

    from bbt.client import Client
    from bbt.testing import live_server
    from bbt.tuner import get_preset

    backend = _common.load_backend(args.dtype, args.threads)
    info = backend.info
    ids, _ = backend.tokenize(list(get_preset("sst2").words))
    cand = [i[0] for i in ids]
    need = max([*args.batches, args.b])
    texts = _common.render("sst2", _common.sample_rows("sst2", need, seed=13), info.mask_token)
    with (
        live_server(backend) as server,
        Client(server.base_url, env_file=None, timeout=3600.0) as client,
    ):
        client.logits(np.zeros((1, 1, info.hidden_size), np.float32), texts[:2], cand)  # warm-up
        by_b = [
            measure(client, info.hidden_size, texts[:b], cand, args.popsize, args.n, args.repeats)
            for b in args.batches
        ]
        print_table(f"B sweep (P={args.popsize}, n={args.n}, {args.dtype})", by_b)
        by_n = [
            measure(client, info.hidden_size, texts[: args.b], cand, args.popsize, n, args.repeats)
            for n in args.n_values
        ]
        print_table(f"n sweep (P={args.popsize}, B={args.b}, {args.dtype})", by_n)
    record = {
        "args": _common.args_record(args),
        "model": {
            "id": info.id,
            "head": getattr(backend, "head_name", None),
            "token_budget": getattr(backend, "token_budget", None),
        },
        "by_batch": by_b,
        "by_n": by_n,
    }
    _common.write_result(args.name, record, args.out_dir)
    plot(args.out_dir / f"{args.name}.png", by_b, by_n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
