"""Quality of the embedded default model: manual prompt vs BBT vs a ridge probe.

A self-contained, minimal Black-Box Tuning loop (Sun et al., ICML 2022) calling
:class:`bbt.server.hf.HFBackend` in-process (no HTTP, no ``bbt.tuner``):

- k-shot train and dev sets (``--shots`` per class each) sampled by seed from the pool of
  ``scripts/quality_data.py``; held-out evaluation on its 1,000 held-out rows per task;
- manual prompt baseline: template + verbalizer, no soft prompt (n = 0), and p = p0;
- BBT: z in R^d, p = A z + p0, A ~ N(0, std_E / (sqrt(d) * sigma)), CMA-ES (pycma) with
  population 20, cross-entropy (or hinge) loss on the train set over the verbalizer logits,
  the dev set checked every few generations, the best-on-dev prompt evaluated held-out;
- probe: ridge regression (one-vs-all on +-1 targets) on the mask-position hidden state of the
  manual prompt, fitted on train, its penalty chosen on dev, evaluated held-out.

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 .venv/bin/python \\
        benchmarks/embedded_quality.py --task agnews --seeds 0 1 2 --budget 600

Prints a table and writes ``benchmarks/results/<tag>.json``; ``--report [FILES]`` prints a
markdown table of the result files (default: all ``benchmarks/results/quality_*.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

import quality_data  # noqa: E402


@dataclass(frozen=True)
class TaskSpec:
    name: str
    template: str  # "{text}" and "[MASK]"
    labels: tuple[str, ...]
    verbalizers: dict[str, tuple[str, ...]]  # option name -> one word per label


TASKS = {
    "sst2": TaskSpec(
        "sst2",
        "{text} . It was [MASK] .",
        ("0", "1"),
        {"paper": ("bad", "great"), "alt": ("terrible", "good")},
    ),
    "agnews": TaskSpec(
        "agnews",
        "[MASK] News: {text}",
        ("World", "Sports", "Business", "Sci/Tech"),
        {
            "paper": ("world", "sports", "business", "tech"),
            "alt": ("politics", "sports", "business", "science"),
        },
    ),
}


def sample_kshot(
    task: str, shots: int, seed: int
) -> tuple[list[quality_data.Row], list[quality_data.Row]]:
    """``shots`` per class for train and another ``shots`` per class for dev, by seed."""
    spec = TASKS[task]
    pool = quality_data.pool_rows(task)
    if task == "sst2":
        pool = tuple(r for r in pool if len(r.text.split()) >= quality_data.SST2_MIN_WORDS)
    rng = random.Random(seed)
    train: list[quality_data.Row] = []
    dev: list[quality_data.Row] = []
    for label in spec.labels:
        rows = [r for r in pool if r.label == label]
        picked = rng.sample(rows, 2 * shots)
        train += picked[:shots]
        dev += picked[shots:]
    rng.shuffle(train)
    rng.shuffle(dev)
    return train, dev


def fill(spec: TaskSpec, rows: list[quality_data.Row] | tuple[quality_data.Row, ...]) -> list[str]:
    return [spec.template.replace("{text}", r.text.replace("[MASK]", "[mask]")) for r in rows]


def label_ids(spec: TaskSpec, rows: Any) -> np.ndarray[Any, Any]:
    index = {lab: i for i, lab in enumerate(spec.labels)}
    return np.array([index[r.label] for r in rows], dtype=np.int64)


def ce_loss(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Mean cross-entropy per prompt; logits [P, B, C]."""
    z = logits - logits.max(axis=2, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    return -logp[:, np.arange(len(y)), y].mean(axis=1)


def hinge_loss(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Multi-class hinge (margin 2) on logits, mean per prompt."""
    gold = logits[:, np.arange(len(y)), y]
    other = logits.copy()
    other[:, np.arange(len(y)), y] = -np.inf
    return np.maximum(0.0, 2.0 - gold + other.max(axis=2)).mean(axis=1)


def accuracy(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (logits.argmax(axis=2) == y[None, :]).mean(axis=1)


def ridge_probe(backend: Any, spec: TaskSpec, train: Any, dev: Any, held: Any) -> dict[str, float]:
    empty = np.zeros((1, 0, backend.info.hidden_size), dtype=np.float32)
    feats = {
        name: backend.mask_hidden_states(empty, fill(spec, rows))[0]
        for name, rows in (("train", train), ("dev", dev), ("held", held))
    }
    mu = feats["train"].mean(axis=0)
    sd = feats["train"].std(axis=0) + 1e-6
    x = {k: np.hstack([(v - mu) / sd, np.ones((len(v), 1))]) for k, v in feats.items()}
    ytr = label_ids(spec, train)
    targets = -np.ones((len(ytr), len(spec.labels)))
    targets[np.arange(len(ytr)), ytr] = 1.0
    best: tuple[float, float] = (-1.0, 1.0)
    for alpha in (0.1, 1.0, 10.0, 100.0, 1000.0):
        reg = alpha * np.eye(x["train"].shape[1])
        reg[-1, -1] = 0.0
        w = np.linalg.solve(x["train"].T @ x["train"] + reg, x["train"].T @ targets)
        dev_acc = float(((x["dev"] @ w).argmax(axis=1) == label_ids(spec, dev)).mean())
        if dev_acc > best[0]:
            best = (dev_acc, alpha)
    alpha = best[1]
    reg = alpha * np.eye(x["train"].shape[1])
    reg[-1, -1] = 0.0
    w = np.linalg.solve(x["train"].T @ x["train"] + reg, x["train"].T @ targets)
    held_acc = float(((x["held"] @ w).argmax(axis=1) == label_ids(spec, held)).mean())
    return {"probe_dev": best[0], "probe_alpha": alpha, "probe_heldout": held_acc}


def run_bbt(
    backend: Any,
    spec: TaskSpec,
    cand: np.ndarray[Any, Any],
    train: Any,
    dev: Any,
    *,
    seed: int,
    budget: int,
    n_tokens: int,
    dim: int,
    popsize: int,
    sigma: float,
    loss: str,
    p0: np.ndarray[Any, Any],
    eval_every: int,
) -> dict[str, Any]:
    import cma

    info = backend.info
    hidden = info.hidden_size
    rng = np.random.default_rng(seed)
    std = info.embedding_std / (np.sqrt(dim) * sigma)
    a = rng.normal(0.0, std, size=(n_tokens * hidden, dim)).astype(np.float32)
    xtr, ytr = fill(spec, train), label_ids(spec, train)
    xdv, ydv = fill(spec, dev), label_ids(spec, dev)
    loss_fn = ce_loss if loss == "ce" else hinge_loss

    def project(zs: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return (zs.astype(np.float32) @ a.T).reshape(len(zs), n_tokens, hidden) + p0[None]

    es = cma.CMAEvolutionStrategy(
        np.zeros(dim), sigma, {"popsize": popsize, "seed": seed + 1, "verbose": -9}
    )
    calls = 0
    gen = 0
    best_dev: tuple[float, float] = (-1.0, -np.inf)  # (acc, -loss)
    best_z = np.zeros(dim)
    curve: list[dict[str, float]] = []
    t0 = time.time()
    c0 = time.process_time()
    while calls + popsize <= budget:
        zs = np.asarray(es.ask())
        logits, _ = backend.logits(project(zs), xtr, cand)
        losses = loss_fn(logits, ytr)
        es.tell(list(zs), losses.tolist())
        calls += popsize
        gen += 1
        point = {
            "calls": calls,
            "train_loss_min": float(losses.min()),
            "train_acc_best": float(accuracy(logits, ytr)[int(losses.argmin())]),
            "seconds": time.time() - t0,
        }
        if gen % eval_every == 0 or calls + popsize > budget:
            cands = np.stack([es.result.xbest, es.mean])
            dl, _ = backend.logits(project(cands), xdv, cand)
            accs, dls = accuracy(dl, ydv), ce_loss(dl, ydv)
            for k in range(len(cands)):
                key = (float(accs[k]), -float(dls[k]))
                if key > best_dev:
                    best_dev, best_z = key, cands[k].copy()
            point["dev_acc_best"] = best_dev[0]
            print(
                f"    calls {calls}: train loss {point['train_loss_min']:.3f} "
                f"acc {point['train_acc_best']:.3f}, best dev {best_dev[0]:.3f} "
                f"({point['seconds']:.0f}s)",
                flush=True,
            )
        curve.append(point)
    return {
        "calls": calls,
        "generations": gen,
        "best_dev_acc": best_dev[0],
        "best_z": best_z,
        "prompt": project(best_z[None])[0],
        "curve": curve,
        "train_seconds": time.time() - t0,
        "train_cpu_seconds": time.process_time() - c0,
    }


def report(paths: list[Path]) -> None:
    """Print a markdown table of result files written by this script."""
    print(
        "| task | head | calls | manual (n=0) | p0 | BBT, 3 seeds | BBT mean | BBT - manual "
        "| probe mean | BBT wall s / seed (CPU s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        rec = json.loads(path.read_text())
        runs, summ = rec["runs"], rec["summary"]
        if not runs or "bbt_heldout" not in runs[0]:
            continue
        seeds = " / ".join(f"{100 * r['bbt_heldout']:.1f}" for r in runs)
        wall = np.mean([r["bbt_seconds"] for r in runs])
        cpu = [r["bbt_train_cpu_seconds"] for r in runs if "bbt_train_cpu_seconds" in r]
        cpu_s = f" ({np.mean(cpu):.0f})" if cpu else ""
        probe = summ.get("probe_heldout_mean")
        print(
            f"| {rec['args']['task']} | {rec['backend']['head']} | {runs[0]['bbt_calls']} | "
            f"{100 * summ['manual_heldout']:.1f} | {100 * summ['p0_heldout']:.1f} | {seeds} | "
            f"{100 * summ['bbt_heldout_mean']:.1f} | "
            f"{100 * (summ['bbt_heldout_mean'] - summ['manual_heldout']):+.1f} | "
            f"{'-' if probe is None else f'{100 * probe:.1f}'} | {wall:.0f}{cpu_s} |"
        )


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--report":
        files = [Path(a) for a in argv[1:]] or sorted(
            (ROOT / "benchmarks" / "results").glob("quality_*.json")
        )
        report(files)
        return 0
    ap = argparse.ArgumentParser(
        description="Quality of the embedded default model (--report [FILES]: table of results)."
    )
    ap.add_argument("--task", choices=sorted(TASKS), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--budget", type=int, default=600, help="calls (candidate prompts x train)")
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--dim", type=int, default=200)
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--loss", choices=["ce", "hinge"], default="ce")
    ap.add_argument(
        "--p0",
        choices=["vocab", "zeros"],
        default="vocab",
        help="p0: embeddings of n vocabulary rows from id 1000 (as the paper), or 0",
    )
    ap.add_argument("--verbalizer", default="paper")
    ap.add_argument("--head", default="auto", help="auto | tied | shipped | PATH")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--token-budget", type=int, default=8192)
    ap.add_argument("--eval-every", type=int, default=5, help="generations between dev checks")
    ap.add_argument("--heldout", type=int, default=1000, help="held-out rows used (<= 1000)")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--no-bbt", action="store_true")
    ap.add_argument("--tag", default=None, help="results file name (default derived)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.shots, args.budget, args.popsize = args.seeds[:1], 1, 4, 2
        args.n_tokens, args.dim, args.eval_every, args.heldout = 2, 4, 1, 8
        args.tag = args.tag or f"quality_{args.task}_smoke"

    import torch

    from bbt.server.hf import HFBackend, describe

    torch.set_num_threads(args.threads)
    spec = TASKS[args.task]
    t_load = time.time()
    backend = HFBackend(head=args.head, dtype=args.dtype, token_budget=args.token_budget)
    load_s = time.time() - t_load
    words = spec.verbalizers.get(args.verbalizer) or tuple(args.verbalizer.split(","))
    ids, toks = backend.tokenize(list(words))
    if any(len(i) != 1 for i in ids):
        raise SystemExit(f"verbalizer words must be single tokens: {toks}")
    cand = np.array([i[0] for i in ids], dtype=np.int64)
    held = quality_data.heldout_rows(args.task)[: args.heldout]
    xh, yh = fill(spec, held), label_ids(spec, held)
    hidden = backend.info.hidden_size
    if args.p0 == "vocab":
        p0 = backend.embed(np.arange(1000, 1000 + args.n_tokens, dtype=np.int64))
    else:
        p0 = np.zeros((args.n_tokens, hidden), dtype=np.float32)

    t = time.time()
    manual_logits, _ = backend.logits(np.zeros((1, 0, hidden), np.float32), xh, cand)
    p0_logits, _ = backend.logits(p0[None], xh, cand)
    manual_acc = float(accuracy(manual_logits, yh)[0])
    p0_acc = float(accuracy(p0_logits, yh)[0])
    base_s = time.time() - t
    print(
        f"[{args.task}] head={backend.head_name} dtype={args.dtype} verbalizer={words} "
        f"held-out={len(held)} manual={manual_acc:.4f} p0={p0_acc:.4f} ({base_s:.0f}s)",
        flush=True,
    )

    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        train, dev = sample_kshot(args.task, args.shots, seed)
        rec: dict[str, Any] = {
            "seed": seed,
            "train_rows": [r.index for r in train],
            "dev_rows": [r.index for r in dev],
        }
        if not args.no_probe:
            t = time.time()
            rec.update(ridge_probe(backend, spec, train, dev, held))
            rec["probe_seconds"] = time.time() - t
        if not args.no_bbt:
            t = time.time()
            res = run_bbt(
                backend,
                spec,
                cand,
                train,
                dev,
                seed=seed,
                budget=args.budget,
                n_tokens=args.n_tokens,
                dim=args.dim,
                popsize=args.popsize,
                sigma=args.sigma,
                loss=args.loss,
                p0=p0,
                eval_every=args.eval_every,
            )
            hl, _ = backend.logits(res["prompt"][None], xh, cand)
            rec.update(
                {
                    "bbt_heldout": float(accuracy(hl, yh)[0]),
                    "bbt_dev": res["best_dev_acc"],
                    "bbt_calls": res["calls"],
                    "bbt_train_seconds": res["train_seconds"],
                    "bbt_train_cpu_seconds": res["train_cpu_seconds"],
                    "bbt_seconds": time.time() - t,
                    "curve": res["curve"],
                }
            )
        runs.append(rec)
        print(
            f"  seed {seed}: "
            + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in rec.items()
                if k not in ("curve", "train_rows", "dev_rows")
            ),
            flush=True,
        )

    def mean(key: str) -> float | None:
        vals = [r[key] for r in runs if key in r]
        return float(np.mean(vals)) if vals else None

    summary = {
        "manual_heldout": manual_acc,
        "p0_heldout": p0_acc,
        "bbt_heldout_mean": mean("bbt_heldout"),
        "bbt_heldout_std": float(np.std([r["bbt_heldout"] for r in runs]))
        if runs and "bbt_heldout" in runs[0]
        else None,
        "probe_heldout_mean": mean("probe_heldout"),
        "bbt_seconds_mean": mean("bbt_seconds"),
    }
    print(
        "\n| task | head | dtype | manual (n=0) | p0 | BBT (mean of seeds) | probe | BBT s/seed |"
    )
    print("|---|---|---|---|---|---|---|---|")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}"

    secs = summary["bbt_seconds_mean"]
    print(
        f"| {args.task} | {backend.head_name} | {args.dtype} | {pct(manual_acc)} | "
        f"{pct(p0_acc)} | {pct(summary['bbt_heldout_mean'])} "
        f"(+-{pct(summary['bbt_heldout_std'])}) | {pct(summary['probe_heldout_mean'])} | "
        f"{'-' if secs is None else f'{secs:.0f}'} |"
    )

    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = args.tag or (
        f"quality_{args.task}_{backend.head_name}_{args.dtype}_n{args.n_tokens}_d{args.dim}"
        f"_b{args.budget}_{args.loss}_{args.verbalizer}"
    )
    record = {
        "command": " ".join(["benchmarks/embedded_quality.py", *argv]),
        "args": vars(args),
        "backend": describe(backend),
        "verbalizer_words": list(words),
        "heldout_rows": [r.index for r in held],
        "machine": {
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": list(os.getloadavg()),
        },
        "load_seconds": load_s,
        "summary": summary,
        "runs": runs,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    path = out_dir / f"{tag}.json"
    path.write_text(json.dumps(record, indent=1, default=float) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
