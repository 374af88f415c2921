"""What ``bbt tune`` shows while it runs: the progress bar (calls, loss, dev metric, ETA)
and messages on stderr, which go through the bar's console while one is live."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import typer

from bbt.tuner.callbacks import TuneCallback
from bbt.tuner.records import GenerationRecord

#: The console of the progress bar while one is on screen: messages must go through it, or
#: the bar's next refresh draws over them (or they land glued to the bar's line).
LIVE: list[Any] = []


def console() -> Any:
    """Where the bar draws: stderr, with everything else the command says, so stdout stays
    the command's result (JSON lines, a dry run's plan)."""
    from rich.console import Console

    return Console(stderr=True)


def clock(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Eta:
    """Time left from the pace of the generations so far.

    Records carry the run's cumulative wall time. After the first record the pace is taken
    from there on, so the start-up before it (imports, discovery, p0's dev score) does not
    inflate the estimate; on the first record alone, the cumulative pace is all there is
    (after a resume it covers the earlier sessions too).
    """

    def __init__(self, total: int) -> None:
        self.total = total
        self._first: tuple[int, float] | None = None

    def __call__(self, calls: int, wall_time: float) -> str:
        if self._first is None:
            self._first = (calls, wall_time)
            spent_calls, spent_s = calls, wall_time
        else:
            spent_calls, spent_s = calls - self._first[0], wall_time - self._first[1]
        if spent_calls <= 0 or spent_s <= 0:
            return "-:--:--"
        return clock(max(self.total - calls, 0) * spent_s / spent_calls)


class Progress(TuneCallback):
    """A rich progress bar: API calls spent, current loss, best dev metric, time, ETA. It is a
    :class:`~bbt.tuner.callbacks.TuneCallback` like any other a library user writes.

    The ETA (see :class:`Eta`) shows from the first generation on, so a user knows at once
    whether to wait.
    """

    def __init__(self, budget: int, metric: str, quiet: bool) -> None:
        self.quiet = quiet
        self.metric = metric
        self._bar: Any = None
        self._task: Any = None
        self.budget = budget
        self._eta = Eta(budget)

    def __enter__(self) -> Progress:
        if self.quiet:
            return self
        from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._bar = RichProgress(
            TextColumn("[bold]tuning[/bold]"),
            BarColumn(bar_width=None),
            TextColumn("{task.completed}/{task.total} calls"),
            TextColumn("loss {task.fields[loss]}"),
            TextColumn("dev {task.fields[metric]} {task.fields[dev]}"),
            TimeElapsedColumn(),
            TextColumn("eta {task.fields[eta]}"),
            console=console(),
            transient=False,
        )
        self._bar.__enter__()
        self._task = self._bar.add_task(
            "tune", total=self.budget, loss="-", dev="-", metric=self.metric, eta="-:--:--"
        )
        LIVE.append(self._bar.console)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            LIVE.remove(self._bar.console)
            self._bar.__exit__(None, None, None)

    def on_generation(self, rec: GenerationRecord) -> None:
        if self._bar is None:
            return None
        dev = "-" if rec.best_dev_metric is None else f"{rec.best_dev_metric:.4f}"
        self._bar.update(
            self._task,
            completed=rec.calls,
            loss=f"{rec.loss_min:.4f}",
            dev=dev,
            eta=self._eta(rec.calls, rec.wall_time),
        )


def summary(result: Any, say: Callable[[str], None]) -> None:
    m = result.metric
    init = result.initial_dev_metric
    say(
        f"done: dev {m} {result.dev_metric:.4f}"
        + (f" (p0: {init:.4f})" if init is not None else "")
        + f", selected at {result.selected_at_calls} of {result.calls} calls "
        f"({result.dev_calls} dev), stop: {result.stop_reason}"
        + (f", {saved} calls saved" if (saved := getattr(result, "calls_saved", 0)) else "")
    )
    usage = result.usage or {}
    if "tokens" in usage:
        say(
            f"usage: {usage.get('calls', 0):,} calls, {usage.get('requests', 0):,} requests, "
            f"{usage['tokens']:,} input tokens, 0 output tokens (the service returns logits)"
        )
    if result.run_dir is not None:
        say(f"run directory: {result.run_dir}")


def sayer(quiet: bool) -> Callable[[str], None]:
    def say(message: str) -> None:
        if not quiet:
            say_err(message)

    return say


def say_err(message: str) -> None:
    """A message on stderr: above the progress bar while one is live, through its console."""
    if LIVE:
        LIVE[-1].print(message, markup=False, highlight=False, soft_wrap=True)
    else:
        typer.echo(message, err=True)
