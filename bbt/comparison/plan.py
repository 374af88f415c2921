"""``bbt compare --dry-run``: what the whole comparison will spend, before any logits call.

Input tokens are estimated from the tokenised length of the rendered rows (one tokenize
call on a sample of them); calls follow each method's shape. A tuned method's figures are
upper bounds (its budget, plus a dev evaluation per ``eval_every`` calls and a final one).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bbt.client import Service
from bbt.comparison.prompting import render_inputs, template_variants
from bbt.comparison.runner import CompareSettings
from bbt.tuner.config import TuneConfig
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


@dataclass
class MethodPlan:
    method: str
    calls: int
    input_tokens: int
    eval_tokens: int
    note: str = ""


def mean_tokens(service: Service, task: Task, rows: Sequence[Example], sample: int = 64) -> float:
    texts = render_inputs(task, service, list(rows)[:sample])
    if not texts:
        return 0.0
    return float(
        np.mean([len(ids) for ids in service.tokenize(texts, add_special_tokens=True).ids])
    )


def plan_method(name: str, s: CompareSettings, task: Task, tok: float, n_test: int) -> MethodPlan:
    """Per seed: fit calls and input tokens, and the held-out scoring's input tokens
    (``task`` as the served model's kind sees it, :meth:`Task.for_kind`)."""
    shots = s.k_shot * task.num_classes  # train rows; dev has as many
    eval_tokens = round(n_test * tok)
    if name == "manual":
        return MethodPlan(name, 0, 0, eval_tokens)
    if name in ("manual-select", "manual-ppl"):
        # manual-ppl: one score call per template over the training rows and their label
        # words (without the capability it chooses on dev as manual-select does).
        n = len(template_variants(task))
        return MethodPlan(name, n, int(n * shots * (tok + 1)), eval_tokens)
    if name == "icl":
        demos = min(s.icl_demos, shots)
        return MethodPlan(
            name, 0, 0, int(n_test * tok * (demos + 1)), "at most; demos cut to fit the model"
        )
    if name in ("feature-lr", "feature-mlp"):
        return MethodPlan(name, 1, int(2 * shots * tok), eval_tokens)
    if name in ("bbt", "bbt-pretrained", "bbtv2"):
        cfg = TuneConfig(budget=s.budget, n_tokens=s.n_tokens, method=name.split("-")[0])
        dev_calls = s.budget // max(cfg.eval_every, 1) + 2
        train_tok = s.budget * shots * (tok + s.n_tokens)
        dev_tok = dev_calls * shots * (tok + s.n_tokens)
        # The held-out scoring, and up to curve_points checkpoints of the learning curve.
        held_tok = n_test * (tok + s.n_tokens) * (1 + max(s.curve_points, 0))
        return MethodPlan(
            name,
            s.budget + dev_calls,
            int(train_tok + dev_tok),
            int(held_tok),
            f"at most; held-out includes {s.curve_points} curve checkpoints",
        )
    if name.startswith("whitebox-"):
        return MethodPlan(name, 0, 0, 0, "local gradients, no API call")
    return MethodPlan(name, 0, 0, 0, "unknown cost (a plug-in method)")


def describe(plans: Sequence[MethodPlan], s: CompareSettings, tok: float) -> list[str]:
    price = s.price_per_1k_tokens
    lines = [
        f"dry run: {len(plans)} methods x {s.seeds} seeds; about {tok:.1f} input tokens per row",
        f"  {'method':<24}{'calls/seed':>12}{'fit tokens/seed':>17}{'held-out tokens':>17}",
    ]
    total_calls = total_tok = 0
    for p in plans:
        lines.append(
            f"  {p.method:<24}{p.calls:>12,}{p.input_tokens:>17,}{p.eval_tokens:>17,}"
            + (f"  ({p.note})" if p.note else "")
        )
        total_calls += p.calls * s.seeds
        total_tok += (p.input_tokens + p.eval_tokens) * s.seeds
    lines.append(
        f"  total: about {total_calls:,} API calls and {total_tok:,} input tokens "
        "(output tokens: 0, the service returns logits, not text)"
    )
    if price is not None:
        lines.append(f"  cost at {price} per 1k tokens: about {total_tok / 1000 * price:.4f}")
    return lines
