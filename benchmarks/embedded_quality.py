"""Quality of the embedded default model: manual prompt vs the product's BBT loop vs a probe.

BBT here is the product: :class:`bbt.tuner.Tuner` (what ``bbt tune`` and ``bbt.tune`` run)
driving :class:`bbt.server.hf.HFBackend` in-process through :class:`bbt.client.LocalClient`
(no HTTP), with the README demo's settings (n = 10, d = 200, population 20, p0 = the
embeddings of vocabulary ids 1000-1009, dev check every 100 calls, cross-entropy loss).
Per seed s:

- k-shot train and dev sets (``--shots`` per class each) drawn by ``random.Random(s)`` from
  the pool of ``scripts/quality_data.py``; held-out evaluation on its 1,000 held-out rows,
  which no tuning, selection or head fitting sees;
- manual prompt baseline: the task's template + verbalizer, no soft prompt (n = 0); and p0
  (the n = 10 starting prompt, z = 0);
- BBT, run once with ``TuneConfig(eval_mean=True)``. Scoring on dev never changes the CMA-ES
  trajectory, so the same run also gives the selection ``eval_mean=False`` would have made:
  every dev evaluation is logged (z, dev metric, dev cross-entropy, which candidate) and the
  tuner's selection rule is replayed over the best-by-train candidates only. Both
  selections are scored held-out, and so is the final CMA-ES mean;
- probe: ridge regression (one-vs-all on +-1 targets) on the mask-position hidden state of the
  manual prompt, fitted on train, its penalty chosen on dev, evaluated held-out.

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 .venv/bin/python \\
        benchmarks/embedded_quality.py --task agnews --seeds 0 1 2 --threads 2

Prints a table and writes ``benchmarks/results/<tag>.json``; ``--report [FILES]`` prints a
markdown table of the result files (default: all ``benchmarks/results/quality_*.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import quality_data  # noqa: E402
from _common import LABELS as DATA_LABELS  # noqa: E402
from _common import (  # noqa: E402
    accuracy,
    cpu_flags,
    default_dtype,
    machine,
    sample_kshot,
    smoke_sizes,
    to_examples,
    tune_settings,
)
from _common import labels as label_indices  # noqa: E402
from _machine import jsonable  # noqa: E402

from bbt.tuner import (  # noqa: E402
    Candidate,
    GenerationRecord,
    InitialPrompt,
    TuneConfig,
    Tuner,
    build_initial_prompt,
    get_preset,
)

#: The calls each task gets by default (the budget that fits ~10 minutes a seed here).
DEFAULT_BUDGET = {"agnews": 600, "sst2": 1000}


class LoggingTuner(Tuner):
    """The product's :class:`Tuner`, unchanged, with every dev evaluation logged: which
    candidate it was (p0, the best-by-train candidate or the CMA-ES mean), its z and its dev
    scores, in the order the tuner made them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dev_log: list[Candidate] = []

    def evaluate_dev(self, z: np.ndarray[Any, Any]) -> tuple[float, float]:
        metric, ce = super().evaluate_dev(z)
        best = self.best
        # The tuner scores the best-by-train candidate by its own z array and the mean by a
        # fresh one; p0 is scored before any candidate exists.
        source = "initial" if best is None else ("best" if z is best.z else "mean")
        calls = 0 if best is None else (best.calls if source == "best" else self.calls)
        self.dev_log.append(Candidate(np.array(z), math.nan, calls, metric, ce, source=source))
        return metric, ce


def replay_selection(log: list[Candidate], sources: tuple[str, ...]) -> Candidate | None:
    """The tuner's selection rule (higher dev metric, then lower dev cross-entropy, earlier
    wins a full tie) over the logged candidates whose source is in ``sources``."""
    sel: Candidate | None = None
    for cand in log:
        if cand.source not in sources:
            continue
        metric, ce = cand.dev_metric, cand.dev_ce
        if metric is None or ce is None:
            continue
        if (
            sel is None
            or sel.dev_metric is None
            or metric > sel.dev_metric
            or (metric == sel.dev_metric and ce < (sel.dev_ce or math.inf))
        ):
            sel = cand
    return sel


def mask_states(backend: Any, texts: list[str]) -> np.ndarray[Any, Any]:
    """The encoder's mask-position state [B, H] for the manual prompt (n = 0)."""
    empty = np.zeros((1, 0, backend.info.hidden_size), dtype=np.float32)
    return np.asarray(backend.mask_hidden_states(empty, texts)[0])


def ridge_probe(
    feats: dict[str, np.ndarray[Any, Any]], labels: dict[str, np.ndarray[Any, Any]], classes: int
) -> dict[str, float]:
    mu = feats["train"].mean(axis=0)
    sd = feats["train"].std(axis=0) + 1e-6
    x = {k: np.hstack([(v - mu) / sd, np.ones((len(v), 1))]) for k, v in feats.items()}
    targets = -np.ones((len(labels["train"]), classes))
    targets[np.arange(len(labels["train"])), labels["train"]] = 1.0

    def fit(alpha: float) -> np.ndarray[Any, Any]:
        reg = alpha * np.eye(x["train"].shape[1])
        reg[-1, -1] = 0.0  # the bias is not penalised
        return np.linalg.solve(x["train"].T @ x["train"] + reg, x["train"].T @ targets)

    best: tuple[float, float] = (-1.0, 1.0)
    for alpha in (0.1, 1.0, 10.0, 100.0, 1000.0):
        dev_acc = float(((x["dev"] @ fit(alpha)).argmax(axis=1) == labels["dev"]).mean())
        if dev_acc > best[0]:
            best = (dev_acc, alpha)
    w = fit(best[1])
    held_acc = float(((x["held"] @ w).argmax(axis=1) == labels["held"]).mean())
    return {"probe_dev": best[0], "probe_alpha": best[1], "probe_heldout": held_acc}


def pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def report(paths: list[Path]) -> None:
    """Print a markdown table of result files written by this script."""
    print(
        "| task | head | dtype | calls | manual (n=0) | p0 | BBT without mean, seeds | mean "
        "| BBT with mean, seeds | mean | final CMA-ES mean | probe | wall s / seed (CPU s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        rec = json.loads(path.read_text())
        runs, summ = rec.get("runs", []), rec.get("summary", {})
        if rec.get("loop") != "bbt.Tuner" or not runs or "bbt_heldout_with_mean" not in runs[0]:
            print(f"(skipped {path.name}: not a result of the product loop)", file=sys.stderr)
            continue

        def seeds(key: str, runs: list[dict[str, Any]] = runs) -> str:
            return " / ".join(pct(r[key]) for r in runs)

        wall = np.mean([r["bbt_seconds"] for r in runs])
        cpu = np.mean([r["bbt_cpu_seconds"] for r in runs])
        task = rec["args"]["task"]
        if not rec.get("complete", True):
            task += f" (partial: seeds {', '.join(str(r['seed']) for r in runs)})"
        print(
            f"| {task} | {rec['backend']['head']} | "
            f"{rec['backend']['compute_dtype']} | {runs[0]['bbt_calls']} | "
            f"{pct(summ['manual_heldout'])} | {pct(summ['p0_heldout'])} | "
            f"{seeds('bbt_heldout_without_mean')} | "
            f"**{pct(summ['bbt_heldout_without_mean'])}** | "
            f"{seeds('bbt_heldout_with_mean')} | **{pct(summ['bbt_heldout_with_mean'])}** | "
            f"{pct(summ['cma_mean_final_heldout'])} | {pct(summ.get('probe_heldout'))} | "
            f"{wall:.0f} ({cpu:.0f}) |"
        )


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="Quality of the embedded default model with the product's BBT loop "
        "(--report [FILES]: table of results)."
    )
    ap.add_argument("--task", choices=sorted(DATA_LABELS), required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shots", type=int, default=16, help="per class, for train and for dev")
    ap.add_argument(
        "--budget", type=int, default=None, help="API calls (default: agnews 600, sst2 1000)"
    )
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--dim", type=int, default=200)
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--sigma", type=float, default=1.0)
    ap.add_argument("--loss", default="ce", help="a loss of bbt.tuner.losses (ce, hinge, ...)")
    ap.add_argument("--init", default="vocab:1000", help="initial prompt p0 (as bbt tune)")
    ap.add_argument("--eval-every", type=int, default=100, help="calls between dev checks")
    ap.add_argument(
        "--verbalizer", default=None, help="comma-separated words (default: the preset's)"
    )
    ap.add_argument("--head", default="auto", help="auto | tied | shipped | PATH")
    ap.add_argument(
        "--dtype",
        default=None,
        help="HFBackend compute dtype (default: bfloat16 where the CPU has native bf16 "
        "(AMX / AVX-512 BF16), else float32)",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heldout", type=int, default=1000, help="held-out rows used (<= 1000)")
    ap.add_argument("--no-probe", action="store_true")
    ap.add_argument("--tag", default=None, help="results file name (default derived)")
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run (the real model, 2 generations, 20 held-out rows), for CI",
    )
    return ap


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] == "--report":
        files = [Path(a) for a in argv[1:]] or sorted(
            (ROOT / "benchmarks" / "results").glob("quality_*.json")
        )
        report(files)
        return 0
    args = build_parser().parse_args(argv)
    if args.budget is None:
        args.budget = DEFAULT_BUDGET[args.task]
    if args.smoke:
        smoke_sizes(args, shots=2, popsize=4, budget=8)
        smoke_sizes(args, n_tokens=2, dim=4, eval_every=4, heldout=20)
        args.tag = args.tag or f"quality_{args.task}_smoke"
    args.dtype = args.dtype or default_dtype()

    import torch

    from bbt.client import LocalClient
    from bbt.errors import BBTError
    from bbt.server.hf import HFBackend, describe

    task = get_preset(args.task)
    try:
        if args.verbalizer:
            words = tuple(w.strip() for w in args.verbalizer.split(","))
            task = dataclasses.replace(task, words=words)
        config = TuneConfig(**tune_settings(args), eval_mean=True)
        t_load = time.time()
        backend = HFBackend(head=args.head, dtype=args.dtype, num_threads=args.threads)
    except (BBTError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    load_s = time.time() - t_load
    service = LocalClient(backend)
    info = service.model_info()
    hidden = info.hidden_size

    def render(rows: Any) -> list[str]:
        field, limit = task.fields[0], info.limits.max_text_chars
        return [task.render({field: r.text}, info.mask_token, limit) for r in rows]

    def ids(rows: Any) -> np.ndarray[Any, Any]:
        return label_indices(args.task, list(rows))

    from bbt.tuner import verbalizer_ids

    cand = verbalizer_ids(task, service)
    held = quality_data.heldout_rows(args.task)[: args.heldout]
    xh, yh = render(held), ids(held)

    def heldout_acc(prompts: np.ndarray[Any, Any]) -> list[float]:
        return [float(a) for a in accuracy(service.logits(prompts, xh, cand), yh)]

    p0, _ = build_initial_prompt(InitialPrompt.parse(args.init, seed=0), service, args.n_tokens)
    t = time.time()
    manual_acc = heldout_acc(np.zeros((1, 0, hidden), np.float32))[0]
    p0_acc = heldout_acc(p0[None])[0]
    print(
        f"[{args.task}] head={backend.head_name} dtype={args.dtype} words={task.words} "
        f"held-out={len(held)} manual={manual_acc:.4f} p0={p0_acc:.4f} "
        f"({time.time() - t:.0f}s)",
        flush=True,
    )

    runs: list[dict[str, Any]] = []

    def write(complete: bool) -> None:
        def mean(key: str) -> float | None:
            vals = [r[key] for r in runs if key in r]
            return float(np.mean(vals)) if vals else None

        summary = {
            "manual_heldout": manual_acc,
            "p0_heldout": p0_acc,
            "bbt_heldout_without_mean": mean("bbt_heldout_without_mean"),
            "bbt_heldout_with_mean": mean("bbt_heldout_with_mean"),
            "cma_mean_final_heldout": mean("cma_mean_final_heldout"),
            "probe_heldout": mean("probe_heldout"),
            "bbt_seconds": mean("bbt_seconds"),
            "bbt_cpu_seconds": mean("bbt_cpu_seconds"),
        }
        if not complete:
            summary["seeds_done"] = [r["seed"] for r in runs]
        print(
            "\n| task | head | dtype | manual (n=0) | p0 | BBT without mean | BBT with mean "
            "| final CMA-ES mean | probe | BBT s/seed |"
        )
        print("|---|---|---|---|---|---|---|---|---|---|")
        secs = summary["bbt_seconds"]
        print(
            f"| {args.task} | {backend.head_name} | {args.dtype} | {pct(manual_acc)} | "
            f"{pct(p0_acc)} | {pct(summary['bbt_heldout_without_mean'])} | "
            f"{pct(summary['bbt_heldout_with_mean'])} | {pct(summary['cma_mean_final_heldout'])} | "
            f"{pct(summary['probe_heldout'])} | {'-' if secs is None else f'{secs:.0f}'} |"
        )

        out_dir = Path(args.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tag = args.tag or f"quality_{args.task}_{backend.head_name}_{args.dtype}_b{args.budget}"
        record = {
            "command": " ".join(["benchmarks/embedded_quality.py", *argv]),
            "loop": "bbt.Tuner",
            "args": vars(args),
            "config": config.as_dict(),
            "task": task.as_dict(),
            "candidate_ids": list(cand),
            "backend": describe(backend),
            "heldout_rows": [r.index for r in held],
            "machine": {
                **machine(),
                "cpu_flags": cpu_flags(),
                "torch": torch.__version__,
                "torch_threads": torch.get_num_threads(),
                "load_average_at_end": list(os.getloadavg()),
            },
            "load_seconds": load_s,
            "summary": summary,
            "runs": runs,
            # Written after every seed, so a stopped run keeps the seeds it finished.
            "complete": complete,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        path = out_dir / f"{tag}.json"
        path.write_text(json.dumps(record, indent=1, default=jsonable) + "\n")
        print(f"wrote {path}", flush=True)

    held_states: np.ndarray[Any, Any] | None = None
    for seed in args.seeds:
        train_rows, dev_rows = sample_kshot(args.task, args.shots, seed)
        rec: dict[str, Any] = {
            "seed": seed,
            "train_rows": [r.index for r in train_rows],
            "dev_rows": [r.index for r in dev_rows],
        }
        if not args.no_probe:
            t = time.time()
            if held_states is None:  # the same for every seed: computed once
                held_states = mask_states(backend, xh)
            feats = {
                "train": mask_states(backend, render(train_rows)),
                "dev": mask_states(backend, render(dev_rows)),
                "held": held_states,
            }
            labels = {"train": ids(train_rows), "dev": ids(dev_rows), "held": yh}
            rec.update(ridge_probe(feats, labels, task.num_classes))
            rec["probe_seconds"] = time.time() - t
        curve: list[GenerationRecord] = []

        def progress(r: GenerationRecord, curve: list[GenerationRecord] = curve) -> None:
            curve.append(r)
            if r.dev_metric is not None or r.mean_dev_metric is not None:
                print(
                    f"    calls {r.calls}: train loss {r.loss_min:.3f}, dev best "
                    f"{r.dev_metric} mean {r.mean_dev_metric} -> selected {r.selected} "
                    f"({r.best_dev_metric}) ({r.wall_time:.0f}s)",
                    flush=True,
                )

        tuner = LoggingTuner(
            service,
            task,
            to_examples(args.task, train_rows, task),
            to_examples(args.task, dev_rows, task),
            dataclasses.replace(config, seed=seed),
            initial_prompt=InitialPrompt.parse(args.init, seed=seed),
            callbacks=[progress],
        )
        t, c = time.time(), time.process_time()
        with_mean = tuner.run()
        bbt_s, bbt_cpu = time.time() - t, time.process_time() - c
        without_mean = replay_selection(tuner.dev_log, ("initial", "best"))
        final_mean = tuner.last_mean
        if without_mean is None or final_mean is None:
            raise RuntimeError("the run scored nothing on dev")
        zs = np.stack([with_mean.z, without_mean.z, final_mean.z])
        t = time.time()
        acc = heldout_acc(tuner.prompts(zs))
        rec.update(
            {
                "bbt_heldout_with_mean": acc[0],
                "bbt_heldout_without_mean": acc[1],
                "cma_mean_final_heldout": acc[2],
                "selected_with_mean": {
                    "source": "initial" if with_mean.calls == 0 else with_mean.source,
                    "calls": with_mean.calls,
                    "dev_metric": with_mean.dev_metric,
                    "dev_ce": with_mean.dev_ce,
                },
                "selected_without_mean": {
                    "source": without_mean.source,
                    "calls": without_mean.calls,
                    "dev_metric": without_mean.dev_metric,
                    "dev_ce": without_mean.dev_ce,
                },
                "cma_mean_final_dev": final_mean.dev_metric,
                "initial_dev_metric": tuner.initial_dev_metric,
                "bbt_calls": tuner.calls,
                "bbt_dev_calls": tuner.dev_calls,
                "bbt_dev_calls_without_mean": sum(d.source != "mean" for d in tuner.dev_log),
                "stop_reason": tuner.stop_reason,
                "bbt_seconds": bbt_s,
                "bbt_cpu_seconds": bbt_cpu,
                "heldout_seconds": time.time() - t,
                "dev_log": [
                    {k: v for k, v in dataclasses.asdict(d).items() if k not in ("z", "train_loss")}
                    for d in tuner.dev_log
                ],
                "curve": [r.as_dict() for r in curve],
            }
        )
        runs.append(rec)
        print(
            f"  seed {seed}: "
            + ", ".join(
                f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                for k, v in rec.items()
                if k not in ("curve", "train_rows", "dev_rows", "dev_log")
            ),
            flush=True,
        )
        if seed != args.seeds[-1]:
            write(complete=False)

    write(complete=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
