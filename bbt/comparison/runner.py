"""Running a comparison: the held-out split, one k-shot sample per seed, every method on
it, and the cost of each phase from the service's usage counters."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bbt.client import Service
from bbt.comparison.base import (
    CompareContext,
    ComparisonError,
    CurvePoint,
    MethodRun,
    Usage,
    metric_of,
)
from bbt.comparison.prompting import labels_of
from bbt.comparison.registry import get_method
from bbt.errors import BBTError
from bbt.tuner.data import Example, sample_k_shot
from bbt.tuner.tasks import Task


@dataclass
class CompareSettings:
    methods: Sequence[str]
    seeds: int = 3
    k_shot: int = 16
    budget: int = 8000
    n_test: int = 200
    price_per_1k_tokens: float | None = None
    local_model: str | None = None
    icl_demos: int = 8
    n_tokens: int = 50
    split_seed: int = 0
    init: str | None = None  # the bbt-pretrained row's start (run:DIR or prompt:ID)
    #: Held-out checkpoints of a tuned method's learning curve (0: none), counted apart.
    curve_points: int = 4


@dataclass
class Comparison:
    task: Task
    settings: CompareSettings
    model: str
    runs: list[MethodRun] = field(default_factory=list)
    n_test: int = 0


def held_out_split(
    data: Sequence[Example], test: Sequence[Example] | None, n_test: int, seed: int
) -> tuple[list[Example], list[Example]]:
    """The pool the shots are drawn from and the held-out rows (disjoint when split)."""
    if test is not None:
        return list(data), list(test)[:n_test]
    if n_test >= len(data):
        raise ComparisonError(f"--n-test {n_test} leaves no rows of the {len(data)} to learn from")
    order = np.random.default_rng(seed).permutation(len(data))
    held = {int(i) for i in order[:n_test]}
    pool = [e for i, e in enumerate(data) if i not in held]
    return pool, [data[int(i)] for i in order[:n_test]]


def score(task: Task, pred: np.ndarray[Any, Any], gold: np.ndarray[Any, Any]) -> float:
    """The task's metric of class predictions (as one-hot logits for the tuner's metric)."""
    return metric_of(task, pred, gold)


def _minus(fit: Usage, part: Usage) -> Usage:
    """``fit`` without ``part`` (what the fit spent on held-out curve checkpoints)."""
    a, b = fit.as_dict(), part.as_dict()
    return Usage(**{k: a[k] - b[k] for k in a})


def run_method(
    name: str, ctx: CompareContext, test: Sequence[Example], price: float | None
) -> MethodRun:
    method = get_method(name)
    svc = ctx.service
    gold = labels_of(test)
    run = MethodRun(name, method.kind, ctx.seed, ctx.task.metric, None, Usage(), Usage(), price)
    start, t0 = svc.usage.copy(), time.perf_counter()
    try:
        fitted = method.fit(ctx)
        mid, t1 = svc.usage.copy(), time.perf_counter()
        run.fit = Usage.spent(mid - start, t1 - t0)
        if fitted.curve_usage is not None:
            run.curve_eval = fitted.curve_usage
            run.fit = _minus(run.fit, fitted.curve_usage)
        pred = fitted.predictor.predict(test)
        run.evaluation = Usage.spent(svc.usage - mid, time.perf_counter() - t1)
    except ComparisonError:
        raise
    except BBTError as exc:
        run.error = f"{type(exc).__name__}: {exc}"
        return run
    run.metric = score(ctx.task, pred, gold)
    run.curve = fitted.curve
    if any(p.split == "test" for p in run.curve):  # the curve ends at the run's own figure
        run.curve.append(CurvePoint(run.fit.calls, run.fit.input_tokens, run.metric, "test"))
    run.notes = fitted.notes
    return run


def compare(
    service: Service,
    task: Task,
    data: Sequence[Example],
    settings: CompareSettings,
    *,
    test: Sequence[Example] | None = None,
    on_run: Callable[[MethodRun], None] | None = None,
    on_progress: Callable[[Comparison], None] | None = None,
) -> Comparison:
    """Every method of ``settings`` on ``settings.seeds`` k-shot samples of ``data``, scored
    on ``test`` (or on ``n_test`` rows of ``data`` kept out of every sample).

    ``on_progress`` gets the comparison so far after every method run, so a caller can save
    what was paid for before the next run starts (the CLI rewrites compare.json each time)."""
    for name in settings.methods:
        # Unknown names, and white-box methods without local weights, fail before any call.
        if get_method(name).kind == "white-box" and settings.local_model is None:
            raise ComparisonError(
                f"{name} needs the model's weights on this machine (the embedded default "
                "server); a remote service or the mock does not expose them"
            )
        if name == "bbt-pretrained" and not settings.init:
            raise ComparisonError(
                "bbt-pretrained needs --init run:DIR (bbt pretrain writes one) or prompt:ID"
            )
    pool, held = held_out_split(data, test, settings.n_test, settings.split_seed)
    if any(e.label is None for e in held):
        raise ComparisonError("the held-out rows need labels")
    info = service.model_info()
    out = Comparison(task, settings, info.id, n_test=len(held))
    for seed in range(settings.seeds):
        train, dev = sample_k_shot(pool, settings.k_shot, seed, task.num_classes)
        ctx = CompareContext(
            service,
            task,
            train,
            dev,
            seed,
            settings.budget,
            local_model=settings.local_model,
            icl_demos=settings.icl_demos,
            n_tokens=settings.n_tokens,
            init=settings.init,
            held_out=held,
            curve_points=settings.curve_points,
        )
        for name in settings.methods:
            run = run_method(name, ctx, held, settings.price_per_1k_tokens)
            out.runs.append(run)
            if on_run is not None:
                on_run(run)
            if on_progress is not None:
                on_progress(out)
    return out
