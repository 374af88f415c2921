"""Held-out accuracy against API calls, per optimiser, on the embedded default model.

Every optimiser is the product's (``TuneConfig.optimizer``: ``cma`` = BBT as shipped,
``sepcma``, ``ipop``, ``gp``) driving :class:`bbt.tuner.Tuner` against
:class:`bbt.server.hf.HFBackend` (MiniLM) in-process. Per seed s the same k-shot train and
dev sets for every optimiser (``_common.sample_kshot``: ``--shots`` per class each, drawn by
``random.Random(s)`` from the pool, which shares no text with the held-out rows), the same
p0 (``vocab:1000``) and the same settings; the selection (dev-selected prompt) is scored on
``--heldout`` held-out rows (``scripts/quality_data.py``, never seen by tuning or
selection) every time it changes, which gives held-out accuracy against calls.

``cma`` runs ``--ref-budget`` calls (BBT's figure at 600 calls: the goal's reference), the
others ``--budget``. A CMA-ES run is a function of its seed, so the cma curve up to
``--budget`` is what a cma run of ``--budget`` calls would give. The table says, per
optimiser, the mean held-out accuracy at 150 calls, at its budget, and the first call count
at which its mean curve reaches cma's mean at ``--ref-budget``.

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 .venv/bin/python \\
        benchmarks/optimizers.py --task agnews --seeds 0 1 2 --shots 4 --budget 200

Prints a table and writes ``benchmarks/results/optimizers_<task>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
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

from bbt.tuner import GenerationRecord, InitialPrompt, TuneConfig, Tuner, get_preset

OPTIMIZERS = ("cma", "sepcma", "ipop", "gp")


@dataclasses.dataclass
class Bench:
    """What every run of one task shares: the service, the task, the held-out scorer."""

    service: Any
    task: Any
    heldout: Callable[[np.ndarray[Any, Any]], float]
    backend: Any


def setup(task_name: str, heldout_rows: int, dtype: str, threads: int, mock: bool = False) -> Bench:
    """The service (MiniLM in-process; ``mock``: the mock model, for the smoke test), the
    task's preset and its held-out scorer."""
    from bbt.client import LocalClient

    if mock:
        from bbt.server.mock import MockBackend

        backend: Any = MockBackend(hidden_size=32)
    else:
        from bbt.server.hf import HFBackend

        backend = HFBackend(dtype=dtype, num_threads=threads)
    service = LocalClient(backend)
    task = get_preset(task_name)
    return Bench(service, task, heldout_scorer(service, task_name, task, heldout_rows), backend)


def run_one(bench: Bench, task_name: str, cfg: TuneConfig, shots: int, init: str) -> dict[str, Any]:
    """One tuning run; the held-out accuracy of its selection after every generation."""
    train, dev = kshot_examples(task_name, shots, cfg.seed, bench.task)
    curve: list[tuple[int, float]] = []
    selections: list[tuple[int, int]] = []  # (calls, key of the selection then)
    dev_curve: list[tuple[int, float | None]] = []  # (calls, the selection's dev metric)
    seen: dict[int, float] = {}
    holder: list[Tuner] = []

    def on_generation(rec: GenerationRecord) -> None:
        t = holder[0]
        sel = t.selected
        if sel is None:
            return
        key = sel.calls if sel.source != "mean" else -sel.calls - 1
        if key not in seen:
            seen[key] = bench.heldout(t.prompts(sel.z)[0])
        curve.append((rec.calls, seen[key]))
        selections.append((rec.calls, key))
        dev_curve.append((rec.calls, sel.dev_metric))

    tuner = Tuner(
        bench.service,
        bench.task,
        train,
        dev,
        cfg,
        initial_prompt=InitialPrompt.parse(init, seed=cfg.seed),
        callbacks=[on_generation],
    )
    holder.append(tuner)
    t0 = time.time()
    sel = tuner.run()
    seconds = time.time() - t0
    final = bench.heldout(tuner.prompts(sel.z)[0])
    p0 = bench.heldout(tuner.p0)
    return {
        "optimizer": cfg.optimizer,
        "seed": cfg.seed,
        "budget": cfg.budget,
        "heldout": final,
        "p0_heldout": p0,
        "curve": [(0, p0), *curve],
        "selections": selections,
        "dev_curve": dev_curve,
        "initial_dev_metric": tuner.initial_dev_metric,
        "dev_metric": sel.dev_metric,
        "selected_calls": sel.calls,
        "calls": tuner.calls,
        "dev_calls": tuner.dev_calls,
        "stop_reason": tuner.stop_reason,
        "seconds": seconds,
    }


def at(curve: list[tuple[int, float]], calls: int) -> float:
    """The held-out accuracy of the selection held after ``calls`` calls."""
    return [acc for c, acc in curve if c <= calls][-1]


def mean_curve(runs: list[dict[str, Any]], upto: int) -> list[tuple[int, float]]:
    points = sorted({c for r in runs for c, _ in r["curve"] if c <= upto})
    return [(c, float(np.mean([at(r["curve"], c) for r in runs]))) for c in points]


def build_parser() -> argparse.ArgumentParser:
    ap = bench_parser(__doc__, task="agnews")
    ap.add_argument("--ref-budget", type=int, default=600)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--optimizers", nargs="+", choices=OPTIMIZERS, default=list(OPTIMIZERS))
    ap.add_argument("--at", type=int, default=150, help="the goal's call count (table)")
    ap.add_argument(
        "--sigma",
        type=float,
        default=1.0,
        help="TuneConfig.sigma: CMA-ES's initial step in z; A's scale divides by it, so "
        "without a bound the prompts CMA-ES tries do not change (use --alpha)",
    )
    ap.add_argument(
        "--alpha",
        type=float,
        default=1.0,
        help="TuneConfig.alpha: the projection's scale, the initial step in prompt space",
    )
    ap.add_argument(
        "--from-result",
        type=Path,
        nargs="*",
        default=None,
        help="summarise the runs of these result files (e.g. one per seed) instead of tuning",
    )
    ap.add_argument(
        "--eval-mean",
        action="store_true",
        help="TuneConfig.eval_mean: the CMA-ES mean is a dev-selection candidate at each check",
    )
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the mock model, for CI")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        smoke_sizes(args, task="sst2", shots=2, heldout=16, n_tokens=2)
        smoke_sizes(args, dim=4, popsize=4, eval_every=8, budget=16, ref_budget=24, at=8)
        args.tag = args.tag or "optimizers_smoke"
    args.dtype = args.dtype or default_dtype()
    tag = args.tag or f"optimizers_{args.task}"
    if args.from_result:
        files = [json.loads(p.read_text()) for p in args.from_result]
        runs = [r for f in files for r in f["runs"]]
        for key in ("task", "shots", "n_tokens", "dim", "popsize", "eval_every", "heldout"):
            setattr(args, key, files[0]["args"][key])
        for key in ("sigma", "alpha"):  # 1.0 in files from before these flags
            setattr(args, key, files[0]["args"].get(key, 1.0))
        args.budget, args.ref_budget = files[0]["args"]["budget"], files[0]["args"]["ref_budget"]
        args.optimizers = [n for n in OPTIMIZERS if any(r["optimizer"] == n for r in runs)]
        args.seeds = sorted({r["seed"] for r in runs})
        summarise(args, runs)
        return 0
    t_all = time.time()
    bench = setup(args.task, args.heldout, args.dtype, args.threads, mock=args.smoke)
    names = ("n_tokens", "dim", "popsize", "sigma", "eval_every")
    base = tune_config(args, names, alpha=args.alpha, eval_mean=args.eval_mean)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for name in args.optimizers:
            budget = args.ref_budget if name == "cma" else args.budget
            cfg = dataclasses.replace(base, seed=seed, optimizer=name, budget=budget)
            rec = run_one(bench, args.task, cfg, args.shots, args.init)
            runs.append(rec)
            print(
                f"[{args.task} seed {seed} {name:6s}] held-out {rec['heldout']:.4f} "
                f"(p0 {rec['p0_heldout']:.4f}) at {rec['calls']} calls, "
                f"@{args.at} {at(rec['curve'], args.at):.4f}, {rec['seconds']:.0f}s",
                flush=True,
            )
    summary = summarise(args, runs)
    wall = write_bench_result(tag, args, t_all, {"summary": summary, "runs": runs})
    print(f"wall time {wall:.0f}s")
    return 0


def summarise(args: argparse.Namespace, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The table: per optimiser, mean held-out at ``--at`` calls and at its budget, and the first
    call count whose mean reaches cma's mean at the reference budget."""
    by = {n: [r for r in runs if r["optimizer"] == n] for n in args.optimizers}
    target = None
    if by.get("cma"):
        target = float(np.mean([at(r["curve"], args.ref_budget) for r in by["cma"]]))
    table_head(
        f"{args.task}, {args.shots}-shot, n={args.n_tokens}, d={args.dim}, "
        f"popsize={args.popsize}, sigma={args.sigma}, alpha={args.alpha}, "
        f"dev check every {args.eval_every} calls, seeds {args.seeds}, "
        f"held-out {args.heldout} rows",
        f"optimizer | held-out @{args.at} | held-out @budget | per seed @budget | calls to target",
        "-::-:",
        None
        if target is None
        else f"target: cma (BBT as shipped) at {args.ref_budget} calls = {100 * target:.1f}",
    )
    summary: dict[str, Any] = {"target": target}
    for name, rs in by.items():
        if not rs:
            continue
        curve = mean_curve(rs, args.budget)
        a150 = at(curve, args.at)
        abud = at(curve, args.budget)
        per_seed = ", ".join(f"{100 * at(r['curve'], args.budget):.1f}" for r in rs)
        reach = None if target is None else next((c for c, a in curve if a >= target), None)
        summary[name] = {
            f"at_{args.at}": a150,
            "at_budget": abud,
            "calls_to_target": reach,
            "mean_curve": curve,
        }
        print(
            f"| {name} | {100 * a150:.1f} | {100 * abud:.1f} | {per_seed} | "
            f"{'not reached' if reach is None else reach} |"
        )
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
