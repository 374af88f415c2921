"""A comparison's outputs: ``compare.json``, a Markdown table (mean and standard deviation
over seeds, cost columns), the same table printed with rich, and a plot of held-out
metric against API calls and against input tokens (matplotlib, imported when plotting)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bbt.comparison.base import CurvePoint, MethodRun, Usage, write_text
from bbt.comparison.runner import Comparison

JSON_FILE = "compare.json"
TABLE_FILE = "compare.md"
PLOT_FILE = "compare.png"


def as_json(comp: Comparison) -> dict[str, Any]:
    s = comp.settings
    return {
        "task": comp.task.name,
        "model": comp.model,
        "metric": comp.task.metric,
        "n_test": comp.n_test,
        "seeds": s.seeds,
        "k_shot": s.k_shot,
        "budget": s.budget,
        "price_per_1k_tokens": s.price_per_1k_tokens,
        "output_tokens_note": "the service scores verbalizer logits and generates no tokens",
        "methods": [r.as_dict() for r in comp.runs],
    }


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), float(arr.std(ddof=0))


def summary_rows(comp: Comparison) -> list[dict[str, Any]]:
    """One row per method: mean and std of the metric (percent) and mean cost per seed."""
    rows = []
    for name in dict.fromkeys(r.method for r in comp.runs):
        runs = [r for r in comp.runs if r.method == name]
        ok = [r for r in runs if r.metric is not None]
        mean, std = (
            _mean_std([100 * float(r.metric or 0.0) for r in ok]) if ok else (float("nan"), 0.0)
        )
        cost = [r.cost for r in ok if r.cost is not None]
        rows.append(
            {
                "method": name,
                "kind": runs[0].kind,
                "mean": mean,
                "std": std,
                "seeds": len(ok),
                "calls": _avg([r.fit.calls for r in ok]),
                "input_tokens": _avg([r.fit.input_tokens for r in ok]),
                "output_tokens": _avg([r.fit.output_tokens for r in ok]),
                "eval_tokens": _avg([r.evaluation.input_tokens for r in ok]),
                "seconds": _avg([r.fit.seconds for r in ok]),
                "cost": sum(cost) / len(cost) if cost else None,
                "error": next((r.error for r in runs if r.error), None),
            }
        )
    return rows


def _avg(values: Sequence[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def markdown(comp: Comparison) -> str:
    metric = comp.task.metric
    head = (
        f"| method | kind | held-out {metric} (%) | calls | input tokens | output tokens "
        "| held-out scoring tokens | fit seconds | cost |\n"
        "|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for r in summary_rows(comp):
        if r["seeds"] == 0:
            lines.append(
                f"| {r['method']} | {r['kind']} | failed: {r['error']} |  |  |  |  |  |  |"
            )
            continue
        cost = "n/a" if r["cost"] is None else f"{r['cost']:.4f}"
        lines.append(
            f"| {r['method']} | {r['kind']} | {r['mean']:.1f} ± {r['std']:.1f} "
            f"| {r['calls']:.0f} | {r['input_tokens']:.0f} | {r['output_tokens']:.0f} "
            f"| {r['eval_tokens']:.0f} | {r['seconds']:.1f} | {cost} |"
        )
    s = comp.settings
    foot = (
        f"\n{comp.task.name} on {comp.model}: {s.seeds} seeds, {s.k_shot} shots per class, "
        f"budget {s.budget}, {comp.n_test} held-out rows; cost columns are the fit's "
        "(mean per seed), held-out scoring is counted apart.\n"
    )
    fallbacks = sorted({r.method for r in comp.runs if r.notes.get("fallback")})
    for name in fallbacks:
        note = next(r.notes["fallback"] for r in comp.runs if r.method == name)
        foot += f"\n{name}: {note}.\n"
    return head + "\n".join(lines) + "\n" + foot


def print_table(comp: Comparison) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{comp.task.name} on {comp.model}: held-out {comp.task.metric}")
    for col in ("method", "kind", "metric %", "calls", "in tokens", "out tokens", "cost"):
        table.add_column(col)
    for r in summary_rows(comp):
        metric = f"{r['mean']:.1f} ± {r['std']:.1f}" if r["seeds"] else f"failed: {r['error']}"
        cost = "n/a" if r["cost"] is None else f"{r['cost']:.4f}"
        table.add_row(
            r["method"],
            r["kind"],
            metric,
            f"{r['calls']:.0f}",
            f"{r['input_tokens']:.0f}",
            f"{r['output_tokens']:.0f}",
            cost,
        )
    Console().print(table)


def plot(comp: Comparison, path: Path) -> Path:
    """Held-out metric against fit calls and against fit tokens: a point per method and
    seed; for tuned methods the held-out learning curve (solid, its checkpoints' own calls
    counted apart, :mod:`bbt.comparison.curves`) and the dev curve (dashed)."""
    return plot_runs(comp.runs, f"{comp.task.name} on {comp.model}", comp.task.metric, path)


def load_runs(data: dict[str, Any]) -> list[MethodRun]:
    """The runs of a ``compare.json`` (as :func:`as_json` wrote it), enough to plot them."""
    runs = []
    for m in data["methods"]:
        fit = Usage(
            calls=m["calls"],
            requests=m["requests"],
            input_tokens=m["input_tokens"],
            output_tokens=m["output_tokens"],
            seconds=m["wall_seconds"],
        )
        run = MethodRun(
            m["method"], m["kind"], m["seed"], m["metric_name"], m["metric"], fit,
            Usage(**m["eval"]), notes=m.get("notes", {}), error=m.get("error"),
            curve=[CurvePoint(**c) for c in m.get("curve", [])],
        )  # fmt: skip
        runs.append(run)
    return runs


def plot_runs(runs: Sequence[MethodRun], title: str, metric: str, path: Path) -> Path:
    """:func:`plot` of ``runs`` (e.g. :func:`load_runs` of a saved ``compare.json``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    names = list(dict.fromkeys(r.method for r in runs))
    for i, name in enumerate(names):
        color = f"C{i % 10}"
        mine = [r for r in runs if r.method == name and r.metric is not None]
        for j, (ax, key) in enumerate(zip(axes, ("calls", "input_tokens"), strict=True)):
            for k, r in enumerate(mine):
                x = r.fit.calls if key == "calls" else r.fit.input_tokens
                ax.scatter(
                    [max(x, 1)],
                    [100 * float(r.metric or 0)],
                    color=color,
                    label=name if k == 0 and j == 0 else None,
                )
                for split, style in (("dev", "--"), ("test", "-")):
                    points = [p for p in r.curve if p.split == split]
                    if points:
                        xs = [max(p.calls if key == "calls" else p.tokens, 1) for p in points]
                        ys = [100 * p.metric for p in points]
                        solid = split == "test"
                        ax.plot(
                            xs, ys, color=color, linestyle=style, alpha=0.8 if solid else 0.4,
                            marker="." if solid else None,
                        )  # fmt: skip
    for ax, label in zip(axes, ("API calls (fit)", "input tokens (fit)"), strict=True):
        ax.set_xscale("log")
        ax.set_xlabel(label + "; 0 drawn at 1")
        ax.set_ylabel(f"{metric} (%)")
    axes[1].set_title(
        "points, solid: held-out (curve checkpoints counted apart); dashed: dev", fontsize=8
    )
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(comp: Comparison, out: Path, *, with_plot: bool = True) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / JSON_FILE, json.dumps(as_json(comp), indent=2) + "\n")
    write_text(out / TABLE_FILE, markdown(comp))
    paths = [out / JSON_FILE, out / TABLE_FILE]
    if with_plot:
        paths.append(plot(comp, out / PLOT_FILE))
    return paths


__all__ = [
    "JSON_FILE",
    "PLOT_FILE",
    "TABLE_FILE",
    "MethodRun",
    "as_json",
    "load_runs",
    "markdown",
    "plot_runs",
    "write",
]
