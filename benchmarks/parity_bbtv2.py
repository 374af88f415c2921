"""BBTv2 parity: bbt's BBTv2 against the reference BBTv2 loop, same model, data, seeds, budget.

- reference: :mod:`reference_bbtv2` (the paper's code's loop, in-process, the model called
  directly);
- bbt: :class:`bbt.tuner.bbtv2.BBTv2Tuner` (what ``bbt tune --method bbtv2`` runs) through the
  real path, a ``bbt.Client`` over HTTP to ``create_app`` serving the same model on a
  loopback port.

Both start layer 0 from the embeddings of vocabulary ids 1000.. and deeper layers from 0,
use the same template, verbalizer, projection std formula per layer, CMA-ES population and
step size, layer order (one generation per layer in turn), budget in API calls and dev
cadence. At every dev checkpoint (a multiple of ``eval_every`` calls) the deep prompt each
has selected so far is scored on held-out rows that no tuning saw (the same rows and helpers
as ``parity.py``); the table and plot give held-out accuracy against API calls, mean and
spread over seeds. Keep the budget a multiple of popsize x L: the reference runs whole rounds.

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 flock /tmp/bbt-heavy.lock nice -n 5 \\
        .venv/bin/python benchmarks/parity_bbtv2.py
    .venv/bin/python benchmarks/parity_bbtv2.py --smoke         # seconds, for CI

Prints a table, writes ``benchmarks/results/parity_bbtv2.json`` and ``parity_bbtv2.png``.
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
from parity import HeldOut, _crossed, checkpoints, plot, summarise
from reference_bbtv2 import PROMPT_OFFSET, ReferenceBBTv2


def run_reference(backend: Any, data: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    ref = ReferenceBBTv2(
        backend,
        data["train_texts"],
        data["train_y"],
        data["dev_texts"],
        data["dev_y"],
        data["cand"],
        n_tokens=args.n_tokens,
        dim=args.dim,
        popsize=args.popsize,
        sigma=args.sigma,
        budget=args.budget,
        eval_every=args.eval_every,
        loss=args.loss,
        seed=seed,
    )
    selections: dict[int, np.ndarray[Any, Any] | None] = {}
    last = [0]

    def on_generation(model: ReferenceBBTv2, rec: dict[str, Any], best: Any) -> None:
        for c in _crossed(last[0], int(rec["calls"]), args.eval_every):
            selections[c] = None if best is None else best.copy()
        last[0] = int(rec["calls"])

    res = ref.run(on_generation)
    return {
        "calls": res.calls,
        "dev_calls": res.dev_calls,
        "seconds": res.seconds,
        "best_dev_acc": res.best_dev_acc,
        "selected_calls": res.selected_calls,
        "layer_std": res.layer_std,
        "selections": selections,
        "p0": ref.p0,
    }


def run_bbt(client: Any, data: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    from bbt.tuner import InitialPrompt, TuneConfig
    from bbt.tuner.bbtv2 import BBTv2Tuner

    cfg = TuneConfig(
        n_tokens=args.n_tokens,
        dim=args.dim,
        popsize=args.popsize,
        sigma=args.sigma,
        budget=args.budget,
        loss=args.loss,
        eval_every=args.eval_every,
        seed=seed,
        method="bbtv2",
    )
    tuner = BBTv2Tuner(
        client,
        data["task"],
        data["train_ex"],
        data["dev_ex"],
        cfg,
        initial_prompt=InitialPrompt(kind="vocab_range", start=PROMPT_OFFSET),
    )
    selections: dict[int, np.ndarray[Any, Any] | None] = {}
    t0 = time.perf_counter()
    tuner.start()
    while not tuner.done():
        before = tuner.calls
        tuner.step()
        for c in _crossed(before, tuner.calls, args.eval_every):
            sel = tuner.selected
            selections[c] = None if sel is None else tuner.prompts(sel.z[None])[0]
    final = tuner.finish()
    return {
        "calls": tuner.calls,
        "dev_calls": tuner.dev_calls,
        "seconds": time.perf_counter() - t0,
        "best_dev_acc": final.dev_metric,
        "selected_calls": final.calls,
        "layer_std": [r.embedding_std for r in tuner.layer_recipes],
        "stop": {"reason": str(tuner.stop_reason)},
        "selections": selections,
        "p0": tuner.p0,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--task", choices=sorted(_common.TEMPLATES), default="agnews")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 42, 100])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--budget", type=int, default=480)
    ap.add_argument("--eval-every", type=int, default=80)
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--dim", type=int, default=200)
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--loss", choices=["ce", "hinge"], default="ce")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--head", default="auto", help="MLM head: auto (bbt's default), tied, ...")
    ap.add_argument("--heldout", type=int, default=800)
    ap.add_argument("--out-dir", type=Path, default=_common.RESULTS)
    ap.add_argument("--name", default="parity_bbtv2")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.shots, args.budget, args.eval_every = args.seeds[:1], 1, 24, 8
        args.n_tokens, args.dim, args.popsize, args.heldout = 2, 8, 4, 8
        args.name = args.name if args.name != "parity_bbtv2" else "parity_bbtv2_smoke"

    from bbt.client import Client
    from bbt.testing import live_server
    from bbt.tuner import get_preset

    t_start = time.perf_counter()
    backend = _common.load_backend(args.dtype, args.threads, args.head)
    info = backend.info
    if args.budget % (args.popsize * info.num_layers):
        print(
            f"note: budget {args.budget} is not a multiple of popsize x L = "
            f"{args.popsize * info.num_layers}: the reference runs whole rounds only",
            flush=True,
        )
    task = get_preset(args.task)
    ids, _ = backend.tokenize(list(task.words))
    cand = np.array([i[0] for i in ids], dtype=np.int64)
    held_rows = _common.heldout(args.task, args.heldout)
    held = HeldOut(
        backend,
        _common.render(args.task, held_rows, info.mask_token),
        _common.labels(args.task, held_rows),
        cand,
    )
    cps = checkpoints(args.budget, args.popsize, args.eval_every)
    runs: list[dict[str, Any]] = []
    baseline: float | None = None
    with (
        live_server(backend) as server,
        Client(server.base_url, env_file=None, timeout=3600.0) as client,
    ):
        for seed in args.seeds:
            train, dev = _common.k_shot(args.task, args.shots, seed)
            data = {
                "task": task,
                "cand": cand,
                "train_texts": _common.render(args.task, train, info.mask_token),
                "dev_texts": _common.render(args.task, dev, info.mask_token),
                "train_y": _common.labels(args.task, train),
                "dev_y": _common.labels(args.task, dev),
                "train_ex": _common.to_examples(args.task, train),
                "dev_ex": _common.to_examples(args.task, dev),
            }
            for impl, fn, svc in (("reference", run_reference, backend), ("bbt", run_bbt, client)):
                res = fn(svc, data, args, seed)
                if baseline is None:
                    baseline = held(res["p0"])
                curve = {
                    c: (None if res["selections"].get(c) is None else held(res["selections"][c]))
                    for c in cps
                }
                rec = {k: v for k, v in res.items() if k not in ("selections", "p0")}
                rec.update({"impl": impl, "seed": seed, "heldout_by_calls": curve})
                runs.append(rec)
                final = curve[cps[-1]]
                print(
                    f"[{impl:9s} seed {seed}] calls={res['calls']} dev_calls={res['dev_calls']} "
                    f"best_dev={res['best_dev_acc']:.3f} held-out@{cps[-1]}="
                    f"{'-' if final is None else f'{final:.4f}'} ({res['seconds']:.0f}s)",
                    flush=True,
                )
    assert baseline is not None

    table: list[dict[str, Any]] = []
    for c in cps:
        row: dict[str, Any] = {"calls": c}
        for impl in ("reference", "bbt"):
            vals = [r["heldout_by_calls"][c] for r in runs if r["impl"] == impl]
            # No selection before the first dev check: count p0 there.
            row[impl] = summarise([baseline if v is None else v for v in vals])
        table.append(row)

    print(
        f"\nBBTv2 parity: {args.task}, {args.shots}-shot, L={info.num_layers}, "
        f"n={args.n_tokens}, d={args.dim}, popsize={args.popsize}, {args.loss}, {args.dtype}, "
        f"seeds {args.seeds}, held-out {args.heldout}; p0 held-out {100 * baseline:.1f}%"
    )
    print(
        "| API calls | reference held-out % (mean ± std) | bbt held-out % (mean ± std) | "
        "bbt - reference (points) |"
    )
    print("|---:|---:|---:|---:|")
    for row in table:
        r, b = row["reference"], row["bbt"]
        print(
            f"| {row['calls']} | {100 * r['mean']:.1f} ± {100 * r['std']:.1f} | "
            f"{100 * b['mean']:.1f} ± {100 * b['std']:.1f} | {100 * (b['mean'] - r['mean']):+.1f} |"
        )
    last = table[-1]
    diff = last["bbt"]["mean"] - last["reference"]["mean"]
    spread = max(last["bbt"]["std"], last["reference"]["std"])
    verdict = "no worse" if diff >= -spread else "worse"
    print(
        f"at {last['calls']} calls: bbt {diff * 100:+.1f} points vs reference "
        f"(largest seed std {100 * spread:.1f}): {verdict}"
    )
    wall = time.perf_counter() - t_start
    print(f"wall time {wall:.0f}s, {held.evaluations} held-out evaluations")
    record = {
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": {
            "id": info.id,
            "head": getattr(backend, "head_name", None),
            "hidden_size": info.hidden_size,
            "num_layers": info.num_layers,
            "layer_std": info.layer_std,
        },
        "p0_heldout": baseline,
        "checkpoints": cps,
        "table": table,
        "final_diff": diff,
        "verdict": verdict,
        "runs": runs,
        "wall_seconds": wall,
    }
    _common.write_result(args.name, record, args.out_dir)
    title = (
        f"BBTv2 {args.task} {args.shots}-shot, MiniLM ({getattr(backend, 'head_name', '?')} "
        f"head, {args.dtype}), n={args.n_tokens}, d={args.dim}, {len(args.seeds)} seeds"
    )
    plot(args.out_dir / f"{args.name}.png", table, baseline, title)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
