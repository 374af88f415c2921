"""The run's plot: training loss and dev metric against API calls (matplotlib, optional)."""

from __future__ import annotations

import io
import json
from pathlib import Path

from bbt.tuner.rundir import atomic_write, read_text

INSTALL_HINT = "install the plot extra to get plot.png: pip install 'bbt[plot]'"


def plot_history(
    history: Path, out: Path, metric: str = "accuracy", initial: float | None = None
) -> str | None:
    """Draw ``history`` (JSONL) into ``out`` (PNG); ``initial`` is p0's dev score, drawn at 0
    calls. Returns ``None`` on success, or a note saying why there is no plot (matplotlib
    missing, empty history); never raises for those.

    Both live in a run directory: the history is read without following a link, and the
    PNG is drawn in memory and replaced atomically, so a ``plot.png`` planted as a link is
    replaced, never written through."""
    try:
        import matplotlib

        matplotlib.use("Agg", force=True)  # files only: never open a window
        import matplotlib.pyplot as plt
    except ImportError:
        return f"matplotlib is not installed; {INSTALL_HINT}"
    rows = [json.loads(line) for line in read_text(history).splitlines() if line.strip()]
    if not rows:
        return "no generation finished; nothing to plot"
    calls = [r["calls"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(7, 6), sharex=True)
    try:
        ax1.plot(calls, [r["loss_mean"] for r in rows], label="population mean", alpha=0.6)
        ax1.plot(calls, [r["loss_min"] for r in rows], label="population best", alpha=0.8)
        ax1.plot(calls, [r["best_loss"] for r in rows], label="best so far", color="black")
        ax1.set_ylabel("training loss")
        ax1.legend(loc="upper right")
        ax1.grid(alpha=0.3)
        dev = [(r["calls"], r["dev_metric"]) for r in rows if r.get("dev_metric") is not None]
        if initial is not None and initial == initial:  # not NaN
            dev.insert(0, (0, initial))
        train = [(r["calls"], r["train_metric"]) for r in rows if r.get("train_metric") is not None]
        if train:
            ax2.plot(
                *zip(*train, strict=True), label=f"train {metric} (population best)", alpha=0.6
            )
        if dev:
            ax2.plot(*zip(*dev, strict=True), marker="o", label=f"dev {metric}")
        ax2.set_xlabel("API calls")
        ax2.set_ylabel(metric)
        ax2.set_ylim(-0.02, 1.02)
        ax2.legend(loc="lower right")
        ax2.grid(alpha=0.3)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100)
    finally:
        plt.close(fig)
    atomic_write(out, buf.getvalue())
    return None
