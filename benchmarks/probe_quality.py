"""Held-out accuracy of the plain probe against the prompt-tuned probe (MiniLM or a decoder).

Per task and seed: ``--shots`` per class for train and as many for dev
(``_common.sample_kshot``, drawn from rows that share no text with the held-out ones), the
first ``--heldout`` held-out rows of ``../shared/data`` (``quality_data.heldout_rows``) for
the score. Both methods are the product's (``bbt.tuner.methods``: ``probe`` and
``probe-tuned``), in-process through :class:`bbt.client.LocalClient`; the held-out score is
:meth:`bbt.tuner.TunedPrompt.evaluate` with the run's head, i.e. what ``bbt eval`` reports.
Calls, dev calls and tokens are the service's usage counters for each run (the held-out
scoring is not counted). ``--model`` picks the served model as
``benchmarks/readout_quality.py`` does (``embedded``: MiniLM; a packaged name such as
``smollm2-135m``: the converted decoder, causal backend, float32). The held-out features of
a prompt are computed once per process (the plain probe and a probe-tuned run that selected
z = 0 share them); the head's logits on them are what ``bbt eval`` computes.

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 .venv/bin/python \\
        benchmarks/probe_quality.py --task agnews --seeds 0 1 2 --budget 60
    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 .venv/bin/python \
        benchmarks/probe_quality.py --model smollm2-135m --task sst2 --shots 4 \
        --heldout 100 --budget 24 --popsize 6 --tag probe_sst2_smollm2

Writes ``benchmarks/results/probe_<task>.json`` (``probe_<task>_<model>.json`` for another
model) and prints one line per seed and a summary.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
from _common import (
    args_record,
    heldout,
    kshot_examples,
    load_backend,
    to_examples,
    tune_config,
    write_result,
)

from bbt.tuner import TuneConfig, TunedPrompt, get_preset, methods
from bbt.tuner.inputs import TunerInputs
from bbt.tuner.methods.probe import PlainProbeMethod, ProbeTuner, TunedProbeMethod
from bbt.tuner.probe_head import OBJECTIVES

METHODS = ("probe", "probe-tuned")


class CachedFeatures:
    """``service`` with its ``features`` answers kept per (texts, prompts, pooling): the
    held-out scoring of the same prompt is computed once. Usage counters are the service's
    own (a cached answer costs nothing)."""

    def __init__(self, service: Any) -> None:
        self._service = service
        self._cache: dict[tuple[Any, ...], Any] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._service, name)

    def features(self, texts: list[str], prompts: Any, **kw: Any) -> Any:
        key = (tuple(texts), np.asarray(prompts).tobytes(), tuple(sorted(kw.items())))
        if key not in self._cache:
            self._cache[key] = self._service.features(texts, prompts, **kw)
        return self._cache[key]


def one_run(
    service: Any,
    task: Any,
    method: str,
    train: Any,
    dev: Any,
    held: Any,
    cfg: TuneConfig,
    held_cache: CachedFeatures | None = None,
    objective: str = "kfold",
    pooling: str = "mean",
) -> dict[str, Any]:
    before = service.usage.copy()
    t0 = time.time()
    if (objective, pooling) == ("kfold", "mean"):  # the registered methods, as in `bbt tune`
        tuner = methods.build_tuner(service, task, train, dev, cfg)
    else:
        cls = PlainProbeMethod if method == "probe" else TunedProbeMethod
        built = cls(pooling=pooling, objective=objective)
        tuner = built.build(TunerInputs(service, task, train, dev, cfg))
    assert isinstance(tuner, ProbeTuner)
    try:
        sel = tuner.run()
        head = tuner.head_for(sel.z)
    finally:
        tuner.close()
    prompt = tuner.prompts(sel.z[None])[0]
    spent = {
        "calls": service.usage.calls - before.calls,
        "tokens": service.usage.tokens - before.tokens,
        "sequences": service.usage.sequences - before.sequences,
    }
    info = service.model_info()
    scorer = CachedFeatures(service) if held_cache is None else held_cache
    scored = TunedPrompt(prompt, task, info.id, service=scorer, head=head).evaluate(held)
    return {
        "method": method,
        "head": tuner.head_kind,
        "objective": objective,
        "pooling": pooling,
        "heldout_accuracy": scored["accuracy"],
        "dev_metric": sel.dev_metric,
        "selected_z0": not sel.z.any(),
        "train_calls": tuner.calls,
        "dev_calls": tuner.dev_calls,
        "service": spent,
        "seconds": round(time.time() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("agnews", "sst2"), required=True)
    ap.add_argument("--model", default="embedded", help="embedded, or a packaged model")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--popsize", type=int, default=10)
    ap.add_argument("--n-tokens", type=int, default=5)
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--eval-every", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--objective", choices=OBJECTIVES, default="kfold")
    ap.add_argument("--pooling", choices=("mean", "mask"), default="mean")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tag", default=None)
    args = ap.parse_args(argv)

    if args.model == "embedded":
        from bbt.client import LocalClient

        service: Any = LocalClient(load_backend(args.dtype, args.threads))
    else:
        from readout_quality import build_service

        service = build_service(args.model, args.threads)
    held_cache = CachedFeatures(service)
    task = get_preset(args.task)
    held = to_examples(args.task, heldout(args.task, args.heldout), task)
    runs = []
    for seed in args.seeds:
        train, dev = kshot_examples(args.task, args.shots, seed, task)
        for method in args.methods:
            names = ("n_tokens", "dim", "popsize", "sigma", "budget", "eval_every")
            cfg = tune_config(args, names, seed=seed, method=method)
            run = one_run(
                service,
                task,
                method,
                train,
                dev,
                held,
                cfg,
                held_cache,
                args.objective,
                args.pooling,
            )
            rec = {"seed": seed, **run}
            runs.append(rec)
            print(rec, flush=True)
    summary = {}
    for method in args.methods:
        accs = [100 * r["heldout_accuracy"] for r in runs if r["method"] == method]
        sd = statistics.stdev(accs) if len(accs) > 1 else 0.0
        summary[method] = {"mean": statistics.mean(accs), "std": sd, "per_seed": accs}
        print(f"{args.task} {method}: {statistics.mean(accs):.1f} +- {sd:.1f}  {accs}")
    model = "" if args.model == "embedded" else "_" + args.model.replace("/", "_")
    write_result(
        args.tag or f"probe_{args.task}{model}",
        {
            "args": args_record(args),
            "model": service.model_info().id,
            "runs": runs,
            "summary": summary,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
