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
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _parity
from reference_bbtv2 import ReferenceBBTv2


def run_reference(backend: Any, data: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    return _parity.run_reference(
        ReferenceBBTv2,
        backend,
        data,
        args,
        seed,
        selection=lambda model, best: best.copy(),
        extra=lambda ref, res: {"layer_std": res.layer_std},
    )


def run_bbt(client: Any, data: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    from bbt.tuner.bbtv2 import BBTv2Tuner

    def extra(tuner: BBTv2Tuner) -> dict[str, Any]:
        return {"layer_std": [r.embedding_std for r in tuner.layer_recipes]}

    return _parity.run_bbt(BBTv2Tuner, client, data, args, seed, extra, method="bbtv2")


def check_budget(args: argparse.Namespace, info: Any) -> None:
    if args.budget % (args.popsize * info.num_layers):
        print(
            f"note: budget {args.budget} is not a multiple of popsize x L = "
            f"{args.popsize * info.num_layers}: the reference runs whole rounds only",
            flush=True,
        )


METHOD = _parity.Method(
    name="parity_bbtv2",
    budget=480,
    smoke_budget=24,
    smoke_eval_every=8,
    run_reference=run_reference,
    run_bbt=run_bbt,
    header=lambda args, info: (
        f"BBTv2 parity: {args.task}, {args.shots}-shot, L={info.num_layers}, "
        f"n={args.n_tokens}, d={args.dim}, popsize={args.popsize}, {args.loss}, {args.dtype}, "
        f"seeds {args.seeds}, held-out {args.heldout}"
    ),
    model=lambda info: {"num_layers": info.num_layers, "layer_std": info.layer_std},
    title="BBTv2 ",
    check=check_budget,
)


def main(argv: list[str] | None = None) -> int:
    return _parity.main(METHOD, __doc__ or "", argv)


if __name__ == "__main__":
    raise SystemExit(main())
