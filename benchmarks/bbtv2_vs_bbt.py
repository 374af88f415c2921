"""BBTv2 against BBT on the embedded default model: held-out accuracy, cost, bytes.

Both methods are the product: :class:`bbt.tuner.Tuner` (BBT) and
:class:`bbt.tuner.bbtv2.BBTv2Tuner` (BBTv2), driving :class:`bbt.server.hf.HFBackend`
(MiniLM, 6 layers) in-process through :class:`bbt.client.LocalClient`, with the README
demo's settings unless told otherwise (n = 10, d = 200, population 20, p0 = embeddings of
ids 1000.., dev check every 100 calls, cross-entropy, 600 calls). Per seed s, the same
k-shot train and dev sets (``embedded_quality.sample_kshot``: 16 per class each, drawn by
``random.Random(s)`` from the pool) and the same budget for both; each method's selected
prompt is scored on the held-out rows of ``scripts/quality_data.py`` (1,000 rows that no
tuning or selection sees).

Also measured, per method: wall seconds per generation (server forward passes plus the
client's projection and loss; both methods share the machine, interleaved by seed), the
client-side projection time per generation, and the bytes one candidate adds to a request
body (the client's own encoding, float32 and float16 on the wire).

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 flock /tmp/bbt-heavy.lock nice -n 5 \\
        .venv/bin/python benchmarks/bbtv2_vs_bbt.py --task agnews --seeds 0 1 2

Prints a table and writes ``benchmarks/results/bbtv2_vs_bbt_<task>.json``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
from _common import (
    bench_parser,
    default_dtype,
    heldout_scorer,
    kshot_examples,
    smoke_sizes,
    table_head,
    tune_config,
    write_bench_result,
)
from embedded_quality import DEFAULT_BUDGET

from bbt.tuner import GenerationRecord, InitialPrompt, get_preset
from bbt.tuner.bbtv2 import make_tuner

METHODS = ("bbt", "bbtv2")


def bytes_per_candidate(info: Any, tuner: Any, popsize: int, dtype: Any) -> float:
    """Request-body bytes of one generation on the training set, per candidate, as the
    client encodes it (base64 tensors in JSON), for ``dtype`` on the wire."""
    from bbt.client.planning import plan_logits

    # The client's own planner (as ``bbt tune --dry-run`` does): the bodies it would send.
    layers = getattr(tuner, "num_layers", None)
    deep = () if layers is None else (layers,)
    shape = (popsize, *deep, tuner.config.n_tokens, info.hidden_size)
    prompts = np.zeros(shape, dtype=np.float32)
    chunks = plan_logits(info, prompts, tuner.train_texts, tuner.candidate_ids, dtype)
    return sum(len(c.request.model_dump_json().encode()) for c in chunks) / popsize


def main(argv: list[str] | None = None) -> int:
    # --budget unset: the task's (embedded_quality.DEFAULT_BUDGET).
    ap = bench_parser(__doc__, task="agnews", shots=16, budget=None, heldout=1000)
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument(
        "--sessions",
        action="store_true",
        help="tune through the HTTP client (into the app's core) with projection sessions on: "
        "BBTv2 over deep sessions (protocol 1.5); records bytes up per call",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    args = ap.parse_args(argv)
    if args.budget is None:
        args.budget = DEFAULT_BUDGET[args.task]
    if args.smoke:
        smoke_sizes(args, shots=2, popsize=4, budget=24)
        smoke_sizes(args, n_tokens=2, dim=4, eval_every=8, heldout=16)
        args.tag = args.tag or f"bbtv2_vs_bbt_{args.task}_smoke"
    args.dtype = args.dtype or default_dtype()
    tag = args.tag or f"bbtv2_vs_bbt_{args.task}"

    from bbt.client import LocalClient
    from bbt.server.hf import HFBackend, describe

    t_all = time.time()
    backend = HFBackend(dtype=args.dtype, num_threads=args.threads)
    service = LocalClient(backend)
    info = service.model_info()
    task = get_preset(args.task)
    heldout = heldout_scorer(service, args.task, task, args.heldout)
    base = tune_config(
        args,
        ("n_tokens", "dim", "popsize", "budget", "eval_every"),
        sessions="on" if args.sessions else "auto",
    )
    tuning: Any = service
    if args.sessions:
        from bbt.client import Client
        from bbt.server import ServerSettings
        from bbt.server.local import ServiceCore
        from bbt.testing import CoreTransport

        core = ServiceCore(backend, ServerSettings(api_keys=[]))
        tuning = Client("http://bbt.bench", transport=CoreTransport(core), env_file=None)
    runs: list[dict[str, Any]] = []
    wire: dict[str, dict[str, float]] = {}
    for seed in args.seeds:
        train, dev = kshot_examples(args.task, args.shots, seed, task)
        for method in args.methods:
            cfg = dataclasses.replace(base, seed=seed, method=method)
            curve: list[GenerationRecord] = []
            before = tuning.usage.copy()
            tuner = make_tuner(
                tuning,
                task,
                train,
                dev,
                cfg,
                initial_prompt=InitialPrompt.parse(args.init, seed=seed),
                callbacks=[curve.append],
            )
            if method not in wire:
                wire[method] = {
                    dt: bytes_per_candidate(info, tuner, cfg.population, dt)
                    for dt in ("float32", "float16")
                }
            z = np.zeros((cfg.population, getattr(tuner, "z_size", cfg.dim)))
            tuner.prompts(z)  # warm-up: the first call allocates
            t = time.perf_counter()
            for _ in range(5):
                tuner.prompts(z)
            projection_s = (time.perf_counter() - t) / 5
            t = time.time()
            sel = tuner.run()
            seconds = time.time() - t
            tuner.close()
            used = tuning.usage - before
            acc = heldout(tuner.prompts(sel.z)[0])
            p0_acc = heldout(tuner.p0)
            rec = {
                "method": method,
                "seed": seed,
                "heldout": acc,
                "p0_heldout": p0_acc,
                "dev_metric": sel.dev_metric,
                "initial_dev_metric": tuner.initial_dev_metric,
                "selected_calls": sel.calls,
                "calls": tuner.calls,
                "dev_calls": tuner.dev_calls,
                "generations": tuner.generation,
                "seconds": seconds,
                "seconds_per_generation": seconds / max(tuner.generation, 1),
                "projection_seconds_per_generation": projection_s,
                "stop_reason": tuner.stop_reason,
                "layers": [r.layer for r in curve],
                "sessions": args.sessions,
                "bytes_sent": used.bytes_sent,
                "bytes_per_call": used.bytes_sent / max(used.calls, 1),
            }
            runs.append(rec)
            print(
                f"[{args.task} seed {seed} {method:5s}] held-out {acc:.4f} (p0 {p0_acc:.4f}) "
                f"dev {sel.dev_metric} selected@{sel.calls} calls={tuner.calls} "
                f"{seconds:.0f}s ({rec['seconds_per_generation']:.2f}s/gen), "
                f"{rec['bytes_per_call']:,.0f} B up / call",
                flush=True,
            )

    def mean(method: str, key: str) -> float:
        return float(np.mean([r[key] for r in runs if r["method"] == method]))

    def std(method: str, key: str) -> float:
        return float(np.std([r[key] for r in runs if r["method"] == method]))

    table_head(
        f"{args.task}, {args.shots}-shot, n={args.n_tokens}, d={args.dim}, "
        f"popsize={args.popsize}, budget={args.budget}, {args.dtype}, seeds {args.seeds}, "
        f"held-out {args.heldout} rows",
        "method | held-out % (mean ± std) | per seed | s / generation | client projection "
        "ms / generation | bytes up / candidate (f32, f16)",
        "-:-:::",
    )
    summary: dict[str, Any] = {}
    for method in args.methods:
        per_seed = ", ".join(f"{100 * r['heldout']:.1f}" for r in runs if r["method"] == method)
        summary[method] = {
            "heldout_mean": mean(method, "heldout"),
            "heldout_std": std(method, "heldout"),
            "seconds_per_generation": mean(method, "seconds_per_generation"),
            "projection_ms_per_generation": 1000
            * mean(method, "projection_seconds_per_generation"),
            "bytes_per_candidate": wire[method],
        }
        s = summary[method]
        print(
            f"| {method} | {100 * s['heldout_mean']:.1f} ± {100 * s['heldout_std']:.1f} | "
            f"{per_seed} | {s['seconds_per_generation']:.2f} | "
            f"{s['projection_ms_per_generation']:.1f} | "
            f"{wire[method]['float32']:,.0f}, {wire[method]['float16']:,.0f} |"
        )
    if set(METHODS) <= set(args.methods):
        diff = summary["bbtv2"]["heldout_mean"] - summary["bbt"]["heldout_mean"]
        print(f"BBTv2 - BBT: {100 * diff:+.1f} points (mean of {len(args.seeds)} seeds)")
        summary["diff_points"] = 100 * diff
    record = {"backend": describe(backend), "layer_std": info.layer_std, "summary": summary}
    wall = write_bench_result(tag, args, t_all, {**record, "runs": runs})
    print(f"wall time {wall:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
