"""The parity harness shared by ``parity.py`` (BBT) and ``parity_bbtv2.py`` (BBTv2).

Both compare a method's reference loop (``reference_bbt`` / ``reference_bbtv2``, run on the
model in-process) with bbt's tuner (through a ``bbt.Client`` over HTTP to ``create_app`` on a
loopback port) on the same k-shot data, seeds and budget, and score every dev checkpoint's
selection on the same held-out rows. Only the loops and a few labels differ, so the scripts
hand this module a :class:`Method` and it does the rest: flags, the seed loop, the table,
the result file (schema as before) and the plot.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _common
import numpy as np
from _reference import PROMPT_OFFSET

#: One run's outcome: calls, dev_calls, seconds, best_dev_acc, selected_calls, the method's
#: own fields, then ``selections`` (prompt per checkpoint) and ``p0``.
RunResult = dict[str, Any]


@dataclass(frozen=True)
class Method:
    """What a parity script adds to the harness."""

    name: str  #: results name (``<name>.json``; ``<name>_smoke`` with --smoke)
    budget: int  #: default budget in API calls
    smoke_budget: int
    smoke_eval_every: int
    run_reference: Callable[[Any, dict[str, Any], argparse.Namespace, int], RunResult]
    run_bbt: Callable[[Any, dict[str, Any], argparse.Namespace, int], RunResult]
    header: Callable[[argparse.Namespace, Any], str]  #: the summary line before the table
    model: Callable[[Any], dict[str, Any]]  #: the method's model fields (info -> record)
    title: str = ""  #: plot title prefix
    check: Callable[[argparse.Namespace, Any], None] = lambda args, info: None


def checkpoints(budget: int, popsize: int, eval_every: int) -> list[int]:
    """Calls at which both loops have just run a dev check (whole generations only)."""
    spent = budget // popsize * popsize
    return [c for c in range(eval_every, spent + 1, eval_every)]


def crossed(before: int, after: int, every: int) -> list[int]:
    """The checkpoints (multiples of ``every``) passed going from ``before`` to ``after``."""
    return [c for c in range(before + 1, after + 1) if c % every == 0]


def run_tuner(tuner: Any, eval_every: int, extra: dict[str, Any]) -> RunResult:
    """``tuner.run()`` (the product's loop), reading the selection at every checkpoint
    through a callback; ``extra`` are the method's own fields (after ``selected_calls``)."""
    selections: dict[int, np.ndarray[Any, Any] | None] = {}
    last = [tuner.calls]

    def on_generation(rec: Any) -> None:
        for c in crossed(last[0], rec.calls, eval_every):
            sel = tuner.selected
            selections[c] = None if sel is None else tuner.prompts(sel.z[None])[0]
        last[0] = rec.calls

    tuner.callbacks.append(on_generation)
    t0 = time.perf_counter()
    final = tuner.run()
    seconds = time.perf_counter() - t0
    return {
        "calls": tuner.calls,
        "dev_calls": tuner.dev_calls,
        "seconds": seconds,
        "best_dev_acc": final.dev_metric,
        "selected_calls": final.calls,
        **extra,
        "stop": {"reason": str(tuner.stop_reason)},
        "selections": selections,
        "p0": tuner.p0,
    }


def run_reference(
    cls: Any,
    backend: Any,
    data: dict[str, Any],
    args: argparse.Namespace,
    seed: int,
    selection: Callable[[Any, Any], Any],
    extra: Callable[[Any, Any], dict[str, Any]],
) -> RunResult:
    """One run of reference loop ``cls``; ``selection(model, best)``: the prompt of what it
    has selected so far; ``extra(model, result)``: its own fields (after ``selected_calls``)."""
    ref = cls(
        backend,
        data["train_texts"],
        data["train_y"],
        data["dev_texts"],
        data["dev_y"],
        data["cand"],
        **_common.tune_settings(args),
        seed=seed,
    )
    selections: dict[int, np.ndarray[Any, Any] | None] = {}
    last = [0]

    def on_generation(model: Any, rec: dict[str, Any], best: Any) -> None:
        for c in crossed(last[0], int(rec["calls"]), args.eval_every):
            selections[c] = None if best is None else selection(model, best)
        last[0] = int(rec["calls"])

    res = ref.run(on_generation)
    return {
        "calls": res.calls,
        "dev_calls": res.dev_calls,
        "seconds": res.seconds,
        "best_dev_acc": res.best_dev_acc,
        "selected_calls": res.selected_calls,
        **extra(ref, res),
        "selections": selections,
        "p0": ref.p0,
    }


def run_bbt(
    make: Callable[..., Any],
    client: Any,
    data: dict[str, Any],
    args: argparse.Namespace,
    seed: int,
    extra: Callable[[Any], dict[str, Any]],
    **config: Any,
) -> RunResult:
    """One run of bbt's tuner ``make(client, task, train, dev, config, initial_prompt=...)``
    with the same settings and p0 as the reference; ``config``: the method's own settings,
    ``extra(tuner)``: its own result fields."""
    from bbt.tuner import InitialPrompt, TuneConfig

    cfg = TuneConfig(**_common.tune_settings(args), seed=seed, **config)
    tuner = make(
        client,
        data["task"],
        data["train_ex"],
        data["dev_ex"],
        cfg,
        initial_prompt=InitialPrompt(kind="vocab_range", start=PROMPT_OFFSET),
    )
    return run_tuner(tuner, args.eval_every, extra(tuner))


class HeldOut:
    """Held-out accuracy of prompts, scored in-process by the same model for both loops."""

    def __init__(self, backend: Any, texts: list[str], y: np.ndarray[Any, Any], cand: Any):
        self.backend, self.texts, self.y, self.cand = backend, texts, y, cand
        self._cache: dict[bytes, float] = {}
        self.evaluations = 0

    def __call__(self, prompt: np.ndarray[Any, Any]) -> float:
        key = np.ascontiguousarray(prompt, dtype=np.float32).tobytes()
        if key not in self._cache:
            logits = self.backend.logits(prompt[None].astype(np.float32), self.texts, self.cand)
            self._cache[key] = float(_common.accuracy(logits[0], self.y)[0])
            self.evaluations += 1
        return self._cache[key]


def summarise(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
    }


def plot(path: Path, table: list[dict[str, Any]], baseline: float, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    x = [row["calls"] for row in table]
    for key, label, color in (("reference", "reference loop", "C1"), ("bbt", "bbt", "C0")):
        mean = np.array([row[key]["mean"] for row in table])
        lo = np.array([row[key]["min"] for row in table])
        hi = np.array([row[key]["max"] for row in table])
        ax.plot(x, 100 * mean, marker="o", color=color, label=f"{label} (mean)")
        ax.fill_between(x, 100 * lo, 100 * hi, color=color, alpha=0.2, label=f"{label} (min-max)")
    ax.axhline(100 * baseline, color="grey", ls="--", label="p0 (no tuning)")
    ax.set_xlabel("API calls (candidates x training set)")
    ax.set_ylabel("held-out accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    print(f"wrote {path}")


def parse_args(method: Method, doc: str, argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--task", choices=sorted(_common.TEMPLATES), default="agnews")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 42, 100])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--budget", type=int, default=method.budget)
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
    ap.add_argument("--name", default=method.name)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    args = ap.parse_args(argv)
    if args.smoke:
        args.seeds, args.shots = args.seeds[:1], 1
        args.budget, args.eval_every = method.smoke_budget, method.smoke_eval_every
        args.n_tokens, args.dim, args.popsize, args.heldout = 2, 8, 4, 8
        args.name = args.name if args.name != method.name else f"{method.name}_smoke"
    return args


def k_shot_data(args: argparse.Namespace, task: Any, cand: Any, mask: str, seed: int) -> Any:
    """One seed's k-shot train/dev sets, as texts and labels (reference) and examples (bbt)."""
    train, dev = _common.k_shot(args.task, args.shots, seed)
    return {
        "task": task,
        "cand": cand,
        "train_texts": _common.render(args.task, train, mask),
        "dev_texts": _common.render(args.task, dev, mask),
        "train_y": _common.labels(args.task, train),
        "dev_y": _common.labels(args.task, dev),
        "train_ex": _common.to_examples(args.task, train),
        "dev_ex": _common.to_examples(args.task, dev),
    }


def main(method: Method, doc: str, argv: list[str] | None = None) -> int:
    args = parse_args(method, doc, argv)

    from bbt.client import Client
    from bbt.testing import live_server
    from bbt.tuner import get_preset

    t_start = time.perf_counter()
    backend = _common.load_backend(args.dtype, args.threads, args.head)
    info = backend.info
    method.check(args, info)
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
    # A population request can take minutes on a busy 2-core CPU: no client-side timeout
    # (a timed-out request would be retried while the server still computes the first).
    with (
        live_server(backend) as server,
        Client(server.base_url, env_file=None, timeout=3600.0) as client,
    ):
        for seed in args.seeds:
            data = k_shot_data(args, task, cand, info.mask_token, seed)
            loops = (("reference", method.run_reference, backend), ("bbt", method.run_bbt, client))
            for impl, fn, svc in loops:
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

    print(f"\n{method.header(args, info)}; p0 held-out {100 * baseline:.1f}%")
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
        "args": _common.args_record(args),
        "model": {
            "id": info.id,
            "head": getattr(backend, "head_name", None),
            "hidden_size": info.hidden_size,
            **method.model(info),
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
    head = getattr(backend, "head_name", "?")
    title = (
        f"{method.title}{args.task} {args.shots}-shot, MiniLM ({head} head, {args.dtype}), "
        f"n={args.n_tokens}, d={args.dim}, {len(args.seeds)} seeds"
    )
    plot(args.out_dir / f"{args.name}.png", table, baseline, title)
    return 0
