"""What tuning bought: the tuned prompt against p0 (the prompt at z = 0) on held-out rows.

BBT's prompt is ``p = A z + p0``; CMA-ES starts at z = 0, so p0 (``p0.npy`` in a run
directory: zeros, a vocabulary slice or a text, whatever ``--init`` chose) is the prompt the
run started from, and the fair baseline for the tuned one. Dev accuracy cannot show the gain:
the tuned prompt was selected on dev. :func:`compare` scores both prompts on the same
labelled rows, which should be rows the run never saw, with the same service and scoring as
:meth:`TunedPrompt.evaluate`, so its ``tuned`` figures are exactly ``bbt eval``'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bbt.client import Service
from bbt.errors import RunError
from bbt.tuner.data import Example
from bbt.tuner.predict import TunedPrompt
from bbt.tuner.probe_baseline import PLAIN_PROBE, plain_probe_head
from bbt.tuner.run import P0_FILE, load_result
from bbt.tuner.rundir import load_npy

Metrics = dict[str, float | int]


@dataclass(frozen=True)
class HeldOutComparison:
    """p0's and the tuned prompt's metrics on the same rows, and the calls tuning spent."""

    metric: str
    p0: Metrics
    tuned: Metrics
    #: API calls the run spent on its training set, and on dev evaluations besides.
    calls: int
    dev_calls: int
    #: What ``p0`` scored: p0 through the verbalizer, or for a probe run the plain probe.
    baseline: str = "p0"

    @property
    def gain(self) -> float:
        """The tuned prompt's metric minus p0's (a fraction: 0.25 is 25 points)."""
        return float(self.tuned[self.metric]) - float(self.p0[self.metric])

    def as_dict(self) -> dict[str, Any]:
        """``bbt eval --baseline``'s JSON: the tuned prompt's metrics at the top level, as plain
        ``bbt eval`` prints them, then p0's, the gain and the calls."""
        return {
            **self.tuned,
            "p0": self.p0,
            "baseline": self.baseline,
            "metric": self.metric,
            "gain": self.gain,
            "calls": self.calls,
            "dev_calls": self.dev_calls,
        }

    def summary(self, source: str) -> str:
        """One line for people, e.g. ``held-out accuracy on 200 rows of test.tsv: p0 33.0% ->
        tuned 60.5% (+27.5 points) after 240 API calls (+7 on dev)``."""
        m = self.metric
        return (
            f"held-out {m} on {self.tuned['n']} rows of {source}: "
            f"{self.baseline} {100 * float(self.p0[m]):.1f}% -> "
            f"tuned {100 * float(self.tuned[m]):.1f}% "
            f"({100 * self.gain:+.1f} points) after {self.calls} API calls "
            f"(+{self.dev_calls} on dev)"
        )


def initial_prompt(tuned: TunedPrompt, service: Service) -> TunedPrompt:
    """The run's p0 as a :class:`TunedPrompt` bound to ``service``: the prompt at z = 0.

    Sent with every request, never stored in the service's registry nor recorded in the run
    directory, whose prompt ids belong to the tuned prompt. A probe run's p0 is read by the
    plain probe's head (:mod:`bbt.tuner.probe_baseline`), the same method at z = 0."""
    run_dir = tuned.run_dir
    if run_dir is None:
        raise RunError("the baseline needs the run directory the prompt was loaded from")
    path = Path(run_dir) / P0_FILE
    try:
        p0 = load_npy(path)
    except FileNotFoundError:
        raise RunError(
            f"{run_dir} has no {P0_FILE} (a run made by an older bbt): its p0 cannot be scored"
        ) from None
    except (OSError, ValueError) as exc:
        raise RunError(f"cannot read {path}: {exc}") from None
    if p0.shape != tuned.prompt.shape:
        raise RunError(
            f"{path} has shape {p0.shape}, the tuned prompt {tuned.prompt.shape}: not the same run"
        )
    head = None
    if tuned.head is not None:
        head = plain_probe_head(tuned, service, p0)
    return TunedPrompt(
        p0,
        tuned.task,
        tuned.model_id,
        tuned.candidate_ids,
        service=service,
        use_registry=False,
        label_words=tuned.label_words,
        calibrate=tuned.calibrate,
        head=head,
    )


def compare(tuned: TunedPrompt, service: Service, examples: Sequence[Example]) -> HeldOutComparison:
    """Score ``tuned`` (loaded with :meth:`TunedPrompt.load`) and its run's p0 on ``examples``."""
    if tuned.run_dir is None:
        raise RunError("the baseline needs the run directory the prompt was loaded from")
    result = load_result(tuned.run_dir)
    baseline = initial_prompt(tuned, service)
    return HeldOutComparison(
        metric=tuned.task.metric,
        p0=baseline.evaluate(examples),
        tuned=tuned.evaluate(examples),
        calls=result.calls,
        dev_calls=result.dev_calls,
        baseline="p0" if baseline.head is None else PLAIN_PROBE,
    )
