"""Held-out accuracy of the logit route's readouts (bbt.tuner.readout): the task's one word
per class vs contextual calibration vs searched label words, for the manual prompt and for
BBT (the product's ``bbt.tune``), on the embedded MiniLM or a packaged decoder.

Data (``scripts/quality_data.py``): k-shot train and dev sets drawn per seed from the pool
(``_common.sample_kshot``), held-out rows from the held-out region, which no tuning, search
or selection sees. Per model and task:

- manual prompt (the task's template and verbalizer, no soft prompt): one forward over the
  held-out rows plus the content-free row gives both the plain and the calibrated figure;
- manual prompt with searched label words (``--search N`` per class, chosen on the seed's
  training shots under the manual prompt), with and without calibration;
- BBT (``--budget`` calls, ``--popsize``, n, d; p0 = vocabulary rows from 1000) tuned once
  without and once with ``calibrate=True``, each scored held-out with its own readout; the
  calls, dev calls and tokens each run spent are recorded;
- BBTv2 (``--methods bbtv2``, the same settings, a prompt at every layer), the task's words;
  on a masked LM or a decoder (both backends serve deep prompts).
- p0 (BBT's start: vocabulary rows from 1000, z = 0), plain and calibrated, once per run.

Usage (background, small scale on a shared CPU)::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nohup .venv/bin/python \\
        benchmarks/readout_quality.py --task agnews --seeds 0 1 2 > /tmp/rq.log 2>&1 &
    .venv/bin/python benchmarks/readout_quality.py --model smollm2-135m --task agnews \\
        --heldout 100 --methods manual
    .venv/bin/python benchmarks/readout_quality.py --report   # the tables of all results

Writes ``benchmarks/results/readout_<task>_<model>.json`` after every seed.
"""

from __future__ import annotations

import argparse
import json
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

from _common import heldout, labels, sample_kshot  # noqa: E402

from bbt.tuner import (  # noqa: E402
    Example,
    InitialPrompt,
    TuneConfig,
    TunedPrompt,
    build_initial_prompt,
    get_preset,
    tune,
    verbalizer_ids,
)
from bbt.tuner.readout import (  # noqa: E402
    Readout,
    build_readout,
    candidate_pool,
    format_label_words,
    pool_logits,
    search_label_words,
)

RESULTS = ROOT / "benchmarks" / "results"
#: The tuned runs per seed: (result key, method, calibrate); ``--methods bbt`` runs BBT
#: without and with calibration, ``--methods bbtv2`` BBTv2 with the task's own words.
TUNED = (("bbt", "bbt", False), ("bbt_calibrated", "bbt", True), ("bbtv2", "bbtv2", False))


def build_service(model: str, threads: int) -> Any:
    from bbt.client import LocalClient

    if model == "embedded":
        from bbt.server.hf import HFBackend

        return LocalClient(HFBackend(dtype="float32", num_threads=threads))
    from bbt.server import packaged
    from bbt.server.hf_causal import HFCausalBackend

    path = packaged.resolve(model) if packaged.is_packaged(model) else Path(model)
    return LocalClient(HFCausalBackend(path, dtype="float32", num_threads=threads))


def acc(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> float:
    return float((np.asarray(logits).argmax(-1) == y).mean())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="agnews", choices=["agnews", "sst2"])
    p.add_argument("--model", default="embedded")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--shots", type=int, default=4)
    p.add_argument("--heldout", type=int, default=200)
    p.add_argument("--budget", type=int, default=80)
    p.add_argument("--popsize", type=int, default=10)
    p.add_argument("--n-tokens", type=int, default=10)
    p.add_argument("--dim", type=int, default=100)
    p.add_argument("--search", type=int, default=3, help="label words per class searched")
    p.add_argument("--methods", default="manual,search,bbt")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tag", default="", help="suffix of the result file's name")
    p.add_argument("--report", action="store_true")
    args = p.parse_args(argv)
    if args.report:
        report(sorted(RESULTS.glob("readout_*.json")))
        return 0
    methods = set(args.methods.split(","))

    service = build_service(args.model, args.threads)
    info = service.model_info()
    task = get_preset(args.task).for_kind(info.kind, info.id)
    field = task.fields[0]
    held_rows = heldout(args.task, args.heldout)
    y_held = labels(args.task, held_rows)
    held_texts = [task.render_for(info, {field: r.text}) for r in held_rows]
    cand = verbalizer_ids(task, service)
    cf = task.render_for(info, {f: "N/A" for f in task.fields})
    manual = np.zeros((1, 0, info.hidden_size), dtype=np.float32)
    out: dict[str, Any] = {
        "task": args.task,
        "model": info.id,
        "args": vars(args),
        "heldout_rows": len(held_rows),
        "seeds": [],
    }
    tag = f"_{args.tag}" if args.tag else ""
    path = RESULTS / f"readout_{args.task}_{args.model.replace('/', '_')}{tag}.json"

    def score(prompt: np.ndarray[Any, Any], readout: Readout) -> tuple[float, float]:
        """Held-out accuracy without and with calibration, from one forward."""
        plain = Readout(readout.ids, readout.groups, cf)
        sent, ids = plain.request(held_texts)
        raw = service.logits(prompt, sent, ids)[0]
        no_cal = Readout(readout.ids, readout.groups, None).reduce(raw[:-1])
        return acc(no_cal, y_held), acc(plain.reduce(raw), y_held)

    t0 = time.perf_counter()
    one = Readout(tuple(cand), tuple((i,) for i in range(len(cand))))
    if "manual" in methods:
        m_plain, m_cal = score(manual, one)
        out["manual"] = {"plain": m_plain, "calibrated": m_cal, "seconds": time.perf_counter() - t0}
        print(f"[{args.task} {info.id}] manual {m_plain:.3f} calibrated {m_cal:.3f}", flush=True)
    init = InitialPrompt.parse("vocab:1000")
    if any(m in methods for _, m, _ in TUNED):
        # BBT starts every seed from the same p0 (vocabulary rows from 1000, z = 0): its
        # held-out score, plain and calibrated from one forward, is where tuning starts.
        p0, _ = build_initial_prompt(init, service, args.n_tokens)
        p0_plain, p0_cal = score(p0[None], one)
        out["p0"] = {"plain": p0_plain, "calibrated": p0_cal, "init": "vocab:1000"}
        print(f"[{args.task} {info.id}] p0 {p0_plain:.3f} calibrated {p0_cal:.3f}", flush=True)
    for seed in args.seeds:
        train_rows, dev_rows = sample_kshot(args.task, args.shots, seed)
        y_train = labels(args.task, train_rows)
        rec: dict[str, Any] = {"seed": seed}
        if "search" in methods:
            words, ids = candidate_pool(task, service, None)
            train_texts = [task.render_for(info, {field: r.text}) for r in train_rows]
            scores = pool_logits(service, manual, train_texts, ids)
            chosen = search_label_words(scores, y_train, words, task.num_classes, args.search)
            spec = format_label_words(task.labels, chosen)
            readout = build_readout(task, service, spec, False)
            assert readout is not None
            s_plain, s_cal = score(manual, readout)
            rec["search"] = {"words": spec, "plain": s_plain, "calibrated": s_cal}
            print(f"  seed {seed} search {spec}: {s_plain:.3f} / cal {s_cal:.3f}", flush=True)
        runs = [(k, m, c) for k, m, c in TUNED if m in methods]
        if runs:
            train = [
                Example({field: r.text}, int(v)) for r, v in zip(train_rows, y_train, strict=True)
            ]
            dev = [
                Example({field: r.text}, int(v))
                for r, v in zip(dev_rows, labels(args.task, dev_rows), strict=True)
            ]
            for key, method, cal in runs:
                cfg = TuneConfig(
                    method=method,
                    n_tokens=args.n_tokens,
                    dim=args.dim,
                    popsize=args.popsize,
                    budget=args.budget,
                    eval_every=max(args.popsize, args.budget // 2),
                    seed=seed,
                    calibrate=cal,
                )
                t = time.perf_counter()
                res = tune(service, task, train, dev, cfg, initial_prompt=init)
                secs = time.perf_counter() - t
                tp = TunedPrompt(res.prompt, task, info.id, service=service, calibrate=cal)
                held = [
                    Example({field: r.text}, int(v)) for r, v in zip(held_rows, y_held, strict=True)
                ]
                a = float(tp.evaluate(held)["accuracy"])
                rec[key] = {
                    "heldout": a,
                    "calls": res.calls,
                    "dev_calls": res.dev_calls,
                    "usage": res.usage,
                    "initial_dev": res.initial_dev_metric,
                    "dev": res.dev_metric,
                    "selected_at_calls": res.selected_at_calls,
                    "seconds": round(secs, 1),
                }
                print(f"  seed {seed} {key}: {a:.3f} ({res.calls} calls, {secs:.0f}s)", flush=True)
        out["seeds"].append(rec)
        RESULTS.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path} ({time.perf_counter() - t0:.0f}s)")
    return 0


def _mean(vals: list[float]) -> str:
    if not vals:
        return "-"
    m = 100 * float(np.mean(vals))
    sd = 100 * float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0  # the sample std
    return f"{m:.1f}" if len(vals) == 1 else f"{m:.1f} ± {sd:.1f}"


def report(paths: list[Path]) -> None:
    print("| model | task | k | held-out | method | plain | calibrated | calls |")
    print("|---|---|---:|---:|---|---:|---:|---:|")
    for path in paths:
        d = json.loads(path.read_text())
        head = f"| {d['model']} | {d['task']} | {d['args']['shots']} | {d['heldout_rows']} |"
        if "manual" in d:
            m = d["manual"]
            print(
                f"{head} manual prompt | {_mean([m['plain']])} | {_mean([m['calibrated']])} | 0 |"
            )
        if "p0" in d:
            p0 = d["p0"]
            print(
                f"{head} p0 ({p0['init']}, BBT's start) | {_mean([p0['plain']])} | "
                f"{_mean([p0['calibrated']])} | 0 |"
            )
        seeds = d["seeds"]
        s = [r["search"] for r in seeds if "search" in r]
        if s:
            n = len(s)
            print(
                f"{head} manual + searched words ({n} seeds) | {_mean([r['plain'] for r in s])}"
                f" | {_mean([r['calibrated'] for r in s])} | 1 |"
            )
        b = [r for r in seeds if "bbt" in r and "bbt_calibrated" in r]
        if b:
            calls = b[0]["bbt"]["calls"]
            print(
                f"{head} BBT ({len(b)} seeds) | {_mean([r['bbt']['heldout'] for r in b])} | "
                f"{_mean([r['bbt_calibrated']['heldout'] for r in b])} | {calls} |"
            )
        v2 = [r["bbtv2"] for r in seeds if "bbtv2" in r]
        if v2:
            print(
                f"{head} BBTv2 ({len(v2)} seeds) | {_mean([r['heldout'] for r in v2])} | - | "
                f"{v2[0]['calls']} |"
            )


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raise SystemExit(main())
