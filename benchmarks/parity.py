"""Parity: bbt against the reference BBT loop, same model, same k-shot data, same seeds.

- reference: :mod:`reference_bbt` (the paper's loop, in-process, the model called directly);
- bbt: ``bbt.tuner.Tuner`` (what ``bbt tune`` runs) through the real path, a
  ``bbt.Client`` over HTTP to ``create_app`` serving the same model on a loopback port.

Both start from the same p0 (embeddings of vocabulary ids 1000.., as the paper's code),
use the same templates, verbalizer, projection std formula, CMA-ES population and step size,
budget in API calls and dev cadence. At every dev checkpoint (a multiple of ``eval_every``
calls) the prompt each has selected so far is scored on held-out rows that no tuning saw;
the table and plot give held-out accuracy against API calls, mean and spread over seeds.

Usage::

    nice -n 10 .venv/bin/python benchmarks/parity.py            # the documented run
    .venv/bin/python benchmarks/parity.py --smoke               # seconds, for CI

Prints a table, writes ``benchmarks/results/parity.json`` and ``parity.png``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _parity
from reference_bbt import PROMPT_OFFSET, ReferenceBBT


def run_reference(backend: Any, data: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    ref = ReferenceBBT(
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

    def on_generation(model: ReferenceBBT, rec: dict[str, Any], best_z: Any) -> None:
        for c in _parity.crossed(last[0], int(rec["calls"]), args.eval_every):
            selections[c] = None if best_z is None else model.prompts(best_z[None])[0]
        last[0] = int(rec["calls"])

    res = ref.run(on_generation)
    return {
        "calls": res.calls,
        "dev_calls": res.dev_calls,
        "seconds": res.seconds,
        "best_dev_acc": res.best_dev_acc,
        "selected_calls": res.selected_calls,
        "proj_std": ref.proj_std,
        "stop": {k: str(v) for k, v in res.stop.items()},
        "selections": selections,
        "p0": ref.p0,
    }


def run_bbt(client: Any, data: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    from bbt.tuner import InitialPrompt, TuneConfig, Tuner

    cfg = TuneConfig(
        n_tokens=args.n_tokens,
        dim=args.dim,
        popsize=args.popsize,
        sigma=args.sigma,
        budget=args.budget,
        loss=args.loss,
        eval_every=args.eval_every,
        seed=seed,
    )
    tuner = Tuner(
        client,
        data["task"],
        data["train_ex"],
        data["dev_ex"],
        cfg,
        initial_prompt=InitialPrompt(kind="vocab_range", start=PROMPT_OFFSET),
    )
    return _parity.run_tuner(tuner, args.eval_every, {"proj_std": tuner.recipe.std})


METHOD = _parity.Method(
    name="parity",
    budget=320,
    smoke_budget=8,
    smoke_eval_every=4,
    run_reference=run_reference,
    run_bbt=run_bbt,
    header=lambda args, info: (
        f"{args.task}, {args.shots}-shot, n={args.n_tokens}, d={args.dim}, "
        f"popsize={args.popsize}, {args.loss}, {args.dtype}, seeds {args.seeds}, "
        f"held-out {args.heldout}"
    ),
    model=lambda info: {"embedding_std": info.embedding_std},
)


def main(argv: list[str] | None = None) -> int:
    return _parity.main(METHOD, __doc__ or "", argv)


if __name__ == "__main__":
    raise SystemExit(main())
