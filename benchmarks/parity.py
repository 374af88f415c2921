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

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _parity
from reference_bbt import ReferenceBBT


def run_reference(backend: Any, data: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    return _parity.run_reference(
        ReferenceBBT,
        backend,
        data,
        args,
        seed,
        selection=lambda model, best_z: model.prompts(best_z[None])[0],
        extra=lambda ref, res: {
            "proj_std": ref.proj_std,
            "stop": {k: str(v) for k, v in res.stop.items()},
        },
    )


def run_bbt(client: Any, data: dict[str, Any], args: argparse.Namespace, seed: int) -> Any:
    from bbt.tuner import Tuner

    def extra(tuner: Tuner) -> dict[str, Any]:
        return {"proj_std": tuner.recipe.std}

    return _parity.run_bbt(Tuner, client, data, args, seed, extra)


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
