"""How fast can `make demo` possibly tune on this CPU with exact (float32) arithmetic?

A floor, not a measurement of bbt: it counts the multiply-adds the demo's forward passes
need (MiniLM's linear layers and attention, for the demo's actual sequences) and divides by
the best float32 matrix-multiply rate torch reaches on these cores at MiniLM's own layer
shapes (``torch.nn.functional.linear``, MKL/oneDNN sgemm, the same kernels the model runs).
No exact engine (ONNX Runtime, torch.compile, a hand-written kernel) does the same
arithmetic much faster than the cores' best sgemm; so if the floor exceeds a time goal, only
less arithmetic (skipping work, fewer tokens) or lossy arithmetic (int8, bfloat16) can meet it.

It also prints the floor with the two exact savings left on the table (computing the last
layer at the mask position only, and reusing layer 0's Q/K/V of text tokens), so the gap is
clear however the engine is tuned. Run it as the demo runs, e.g. held to AVX2 kernels::

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
    FBGEMM_ENABLE_INSTRUCTIONS=AVX2 HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/cpu_ceiling.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _machine  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

CAP_VARS = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "FBGEMM_ENABLE_INSTRUCTIONS",
)


def cpu_flags() -> list[str]:
    return _machine.cpu_flags(
        ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "avx512_vnni", "avx_vnni")
    )


def demo_token_counts(task_name: str, data: Path, k: int, seed: int, n_tokens: int) -> list[int]:
    """Tokens per training sequence of the demo (special tokens and the soft prompt included),
    tokenised exactly as the server does."""
    from transformers import AutoTokenizer

    from bbt.server.hf import default_model_path
    from bbt.tuner import get_preset, load_examples, sample_k_shot

    task = get_preset(task_name)
    tok = AutoTokenizer.from_pretrained(str(default_model_path()))
    train, _ = sample_k_shot(load_examples(data, task), k, seed, len(task.labels))
    texts = [task.render(e.fields, str(tok.mask_token), 2000) for e in train]
    return [len(tok(t)["input_ids"]) + n_tokens for t in texts]


def sgemm_rate(threads: int, tokens: int, shapes: list[tuple[int, int]], repeats: int) -> float:
    """Best GFLOP/s of F.linear over MiniLM's layer shapes (the fastest of the repeats, so
    that other load on the machine lowers it least), all shapes run as one layer runs them."""
    import torch

    torch.set_num_threads(threads)
    xs = {k: torch.randn(tokens, k) for k, _ in shapes}
    ws = [torch.randn(m, k) for k, m in shapes]
    flops = sum(2.0 * tokens * k * m for k, m in shapes)
    for _ in range(3):
        for (k, _), w in zip(shapes, ws, strict=True):
            torch.nn.functional.linear(xs[k], w)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for (k, _), w in zip(shapes, ws, strict=True):
            torch.nn.functional.linear(xs[k], w)
        times.append(time.perf_counter() - t0)
    return flops / min(times) / 1e9


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data", type=Path, default=ROOT / "examples/data/agnews.tsv")
    p.add_argument("--task", default="agnews")
    p.add_argument("-k", type=int, default=16)
    p.add_argument("-n", "--n-tokens", type=int, default=10)
    p.add_argument("--budget", type=int, default=600, help="API calls (candidates x train set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--goal-s", type=float, default=300.0)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args(argv)

    from transformers import AutoConfig

    from bbt.server.hf import default_model_path

    cfg: Any = AutoConfig.from_pretrained(str(default_model_path()))
    h, f, layers = int(cfg.hidden_size), int(cfg.intermediate_size), int(cfg.num_hidden_layers)
    lengths = demo_token_counts(args.task, args.data, args.k, args.seed, args.n_tokens)
    sequences = args.budget * len(lengths)  # dev checks are ~1% more: left out (a floor)
    tokens_per_call = sum(lengths)
    sq_per_call = sum(s * s for s in lengths)

    linear_per_token = 4 * h * h + 2 * h * f  # Q, K, V, O and the FFN, multiply-adds
    macs_linear = layers * linear_per_token * tokens_per_call
    macs_attn = layers * 2 * h * sq_per_call  # Q K^T and A V over each whole sequence
    macs_call = macs_linear + macs_attn
    # Exact savings: the last layer needs Q, O and the FFN at the mask position only (K and V
    # stay for every token); layer 0's Q/K/V of the text tokens do not depend on the prompt.
    text_tokens = tokens_per_call - args.n_tokens * len(lengths)
    saved = (2 * h * h + 2 * h * f) * (tokens_per_call - len(lengths)) + 3 * h * h * text_tokens
    saved += h * sq_per_call  # the last layer's Q K^T / A V rows of non-mask queries
    gflop_total = 2.0 * macs_call * args.budget / 1e9

    shapes = [(h, 3 * h), (h, h), (h, f), (f, h)]
    rate = sgemm_rate(args.threads, 4096, shapes, args.repeats)
    floor_s = gflop_total / rate
    floor_exact_tricks_s = 2.0 * (macs_call - saved) * args.budget / 1e9 / rate

    caps = {v: os.environ[v] for v in CAP_VARS if v in os.environ}
    out = {
        "cpu_flags": cpu_flags(),
        "kernel_caps": caps or "none (native)",
        "threads": args.threads,
        "model": {"layers": layers, "hidden": h, "ffn": f},
        "demo": {
            "train_sequences_per_call": len(lengths),
            "mean_tokens": round(tokens_per_call / len(lengths), 1),
            "calls": args.budget,
            "sequences": sequences,
        },
        "gflop_per_sequence": round(2.0 * macs_call / len(lengths) / 1e9, 3),
        "gflop_total": round(gflop_total, 1),
        "sgemm_gflops": round(rate, 1),
        "floor_seconds": round(floor_s, 1),
        "floor_seconds_with_exact_savings": round(floor_exact_tricks_s, 1),
        "sequences_per_second_at_floor": round(sequences / floor_s, 1),
        "goal_seconds": args.goal_s,
    }
    print(f"CPU flags: {' '.join(out['cpu_flags'])}; kernel caps: {out['kernel_caps']}")
    print(
        f"demo: {args.budget} calls x {len(lengths)} sequences ({sequences} forward sequences), "
        f"mean {out['demo']['mean_tokens']} tokens -> {out['gflop_per_sequence']} GFLOP each, "
        f"{out['gflop_total']} GFLOP in all"
    )
    print(f"best float32 sgemm at MiniLM's shapes, {args.threads} threads: {rate:.1f} GFLOP/s")
    print(
        f"floor for the tuning alone: {floor_s:.0f} s ({out['sequences_per_second_at_floor']} "
        f"sequences/s); with both exact savings: {floor_exact_tricks_s:.0f} s; "
        f"goal for all of `make demo`: {args.goal_s:.0f} s"
    )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
