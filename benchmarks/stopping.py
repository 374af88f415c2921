"""``--patience-calls``: calls saved and held-out accuracy lost, on the embedded model.

For each seed, one BBT run (``cma``, :func:`optimizers.run_one`: the product's Tuner against
MiniLM in-process, the selection scored on held-out rows whenever it changes) spends the
whole ``--budget``. A run with ``patience_calls = P`` follows exactly the same trajectory
until it stops (same seed, same calls; stopping only ends the loop, which
``tests/tuner/test_stopping.py`` checks bit for bit), so the stop is found by replaying
the product's own rule (:func:`bbt.tuner.stopping.stop_due`) over the full run's dev
checks: no second run is needed for each P. Per P the table gives the calls saved
(budget - calls at the stop) and the held-out accuracy lost (full run's selection minus the
selection held at the stop), both averaged over seeds.

``--ucb T ...`` replays the confidence-bound rule (``--stop-ucb T``, with ``--ucb-window``
and ``--ucb-min-calls``; :func:`bbt.tuner.stopping.ucb_stop_due`) the same way, over the
improvement curve of the full run (the selection's dev metric at every check; result
files from before this field cannot be replayed for it).

``--from-result`` replays runs already in an ``optimizers.py`` result file (its ``cma``
runs) instead of tuning again.

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 .venv/bin/python \\
        benchmarks/stopping.py --task sst2 --seeds 0 1 2 --shots 4 --budget 200 --patience 30 60

Prints a table and writes ``benchmarks/results/stopping_<task>.json``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    bench_parser,
    default_dtype,
    smoke_sizes,
    table_head,
    tune_config,
    write_bench_result,
)
from optimizers import at, run_one, setup

from bbt.tuner.stopping import calls_saved, stop_due, ucb_stop_due


def replay(run: dict[str, Any], patience: int, budget: int) -> tuple[int, float]:
    """Where a run with ``patience_calls = patience`` stops (calls) and the held-out accuracy
    of its selection there, from the dev checks of the full run (one per generation)."""
    improved_at, last = 0, 0  # p0, selected at 0 calls
    for calls, key in run["selections"]:
        if key != last:  # the selection changed at this check: a gain
            improved_at, last = calls, key
        if stop_due(calls, improved_at, patience):
            return calls, at(run["curve"], calls)
    return run["calls"], run["heldout"]


def replay_ucb(
    run: dict[str, Any], threshold: float, window: int, min_calls: int, eval_every: int
) -> tuple[int, float]:
    """Where a run with ``stop_ucb = threshold`` stops and its selection's held-out accuracy
    there, from the full run's improvement curve (as :func:`replay` does for patience)."""
    if "dev_curve" not in run:
        raise SystemExit("--ucb needs runs with a dev_curve (optimizers.py from 2026-12-03 on)")
    initial = run.get("initial_dev_metric")
    curve: list[float] = [initial] if initial is not None else []
    budget = run["budget"]
    for calls, metric in run["dev_curve"]:
        if metric is None:
            continue
        curve.append(metric)
        if ucb_stop_due(curve, calls, budget, eval_every, threshold, window, min_calls):
            return calls, at(run["curve"], calls)
    return run["calls"], run["heldout"]


def main(argv: list[str] | None = None) -> int:
    ap = bench_parser(__doc__, popsize=10)
    ap.add_argument("--patience", type=int, nargs="+", default=[30, 60])
    ap.add_argument("--ucb", type=float, nargs="*", default=[])
    ap.add_argument("--ucb-window", type=int, default=4)
    ap.add_argument("--ucb-min-calls", type=int, default=40)
    ap.add_argument("--from-result", type=Path, nargs="*", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the mock model, for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        smoke_sizes(args, task="sst2", shots=2, heldout=16, n_tokens=2)
        smoke_sizes(args, dim=4, popsize=4, budget=24, patience=[8, 16])
        args.tag = args.tag or "stopping_smoke"
    args.dtype = args.dtype or default_dtype()
    tag = args.tag or f"stopping_{args.task}"
    t_all = time.time()
    runs: list[dict[str, Any]] = []
    if args.from_result:
        for path in args.from_result:
            data = json.loads(path.read_text())
            runs += [r for r in data["runs"] if r["optimizer"] == "cma"]
        args.budget = min(r["budget"] for r in runs)
        args.from_result = [str(p) for p in args.from_result]  # for the result file
    else:
        bench = setup(args.task, args.heldout, args.dtype, args.threads, mock=args.smoke)
        # A dev check every generation, so the rule sees every change of the selection.
        base = tune_config(args, ("n_tokens", "dim", "popsize", "budget"), eval_every=args.popsize)
        for seed in args.seeds:
            rec = run_one(
                bench, args.task, dataclasses.replace(base, seed=seed), args.shots, args.init
            )
            runs.append(rec)
            print(
                f"[{args.task} seed {seed}] held-out {rec['heldout']:.4f} at {rec['calls']} "
                f"calls, {rec['seconds']:.0f}s",
                flush=True,
            )
    table_head(
        f"{args.task}, {len(runs)} seeds, budget {args.budget} calls",
        "patience (calls) | calls saved (mean, per seed) | held-out lost, points (mean, per seed)",
        ":--",
    )
    summary: dict[str, Any] = {}
    for p in args.patience:
        saved, lost = [], []
        for r in runs:
            full = at(r["curve"], args.budget)
            stop, acc = replay(r, p, args.budget)
            reason = "patience_calls" if stop < r["calls"] else "budget"
            saved.append(calls_saved(args.budget, stop, reason))
            lost.append(100 * (full - acc))
        summary[str(p)] = {"calls_saved": saved, "points_lost": lost}
        print(
            f"| {p} | {np.mean(saved):.0f} ({', '.join(map(str, saved))}) | "
            f"{np.mean(lost):.1f} ({', '.join(f'{v:.1f}' for v in lost)}) |"
        )
    for thr in args.ucb:
        saved, lost = [], []
        for r in runs:
            full = at(r["curve"], args.budget)
            stop, acc = replay_ucb(r, thr, args.ucb_window, args.ucb_min_calls, args.popsize)
            reason = "ucb" if stop < r["calls"] else "budget"
            saved.append(calls_saved(args.budget, stop, reason))
            lost.append(100 * (full - acc))
        summary[f"ucb {thr}"] = {"calls_saved": saved, "points_lost": lost}
        print(
            f"| ucb {thr} (window {args.ucb_window}, min {args.ucb_min_calls}) | "
            f"{np.mean(saved):.0f} ({', '.join(map(str, saved))}) | "
            f"{np.mean(lost):.1f} ({', '.join(f'{v:.1f}' for v in lost)}) |"
        )
    write_bench_result(tag, args, t_all, {"summary": summary, "runs": runs})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
