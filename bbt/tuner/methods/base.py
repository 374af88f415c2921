"""What a tuning method declares: its parameter space, prompt layout, tuner and cost model.

A method (BBT, BBTv2, later the baselines of a comparison) is one object registered by name
(:mod:`bbt.tuner.methods.registry`). Run, resume, the dry-run planner and the CLI ask it
instead of testing which tuner class they hold, so a new method is one module plus its
registration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol import ModelInfo

if TYPE_CHECKING:
    from bbt.tuner.inputs import TunerInputs
    from bbt.tuner.tuner import TuneConfig, Tuner

F32 = np.ndarray[Any, np.dtype[np.float32]]


@dataclass(frozen=True)
class PromptLayout:
    """The shape of one candidate: z of ``z_size`` numbers, sent as a prompt of
    ``shape`` — [n, H] at the input, or [L, n, H] with ``layers`` = L (deep prompts)."""

    z_size: int
    n_tokens: int
    hidden_size: int
    layers: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        deep = () if self.layers is None else (self.layers,)
        return (*deep, self.n_tokens, self.hidden_size)

    @property
    def deep(self) -> bool:
        return self.layers is not None


@dataclass(frozen=True)
class CallCounts:
    """What a run that goes its whole budget spends, in API calls (the cost model)."""

    generations: int
    train_calls: int
    checks: int  # dev checks (generations that cross a multiple of eval_every)
    dev_calls_max: int  # at most: a check whose best has not changed costs nothing


def generations(budget: int, popsize: int) -> int:
    """Generations a run makes: one runs only if it fits in what is left of the budget."""
    return budget // popsize


def dev_calls(
    n_generations: int,
    popsize: int,
    eval_every: int,
    *,
    initial: bool,
    has_dev: bool,
    mean: bool = False,
) -> tuple[int, int]:
    """(checks, most dev calls) of a run that goes the whole budget.

    One dev call for p0 first, one per check (a generation that crosses a multiple of
    ``eval_every`` calls), one at the end unless the last generation was a check. A check
    whose best candidate has not changed since the last one costs nothing, so a real run
    makes at most this many. With ``mean`` (``eval_mean``) every check and the final
    evaluation also score the CMA-ES mean: one more call each.
    """
    if not has_dev:
        return 0, 0
    crossed = [
        g
        for g in range(1, n_generations + 1)
        if (g * popsize) // eval_every > ((g - 1) * popsize) // eval_every
    ]
    final = 1 if n_generations > 0 and (not crossed or crossed[-1] != n_generations) else 0
    per_check = 2 if mean else 1
    return len(crossed), int(initial) + per_check * (len(crossed) + final)


class Method(ABC):
    """A tuning method. Subclasses set :attr:`name`, :attr:`summary` and
    :attr:`tuner_class` (or override :meth:`build`) and implement :meth:`layout` and
    :meth:`projection_fingerprint`."""

    name: ClassVar[str]
    #: One line for ``--help`` and error messages.
    summary: ClassVar[str] = ""
    #: Capabilities (``bbt.protocol`` names, e.g. ``deep_prompts``) the service must offer.
    requires: ClassVar[tuple[str, ...]] = ()

    def check(self, info: ModelInfo) -> None:
        """Raise :class:`ConfigurationError` when the service's model lacks a capability
        this method needs."""
        missing = [c for c in self.requires if c not in info.capabilities]
        if missing:
            raise ConfigurationError(
                f"method {self.name} needs {', '.join(missing)}, which model {info.id!r} "
                "does not offer"
            )

    #: The tuner class :meth:`build` makes, constructed as ``Tuner`` is.
    tuner_class: ClassVar[type[Tuner]]

    def build(self, inputs: TunerInputs) -> Tuner:
        """The tuner (optimiser + evaluator) of a new or resumed run. ``inputs.p0`` is the
        one a resumed run recorded (its ``p0.npy``). A method whose tuner is made otherwise
        overrides this."""
        return inputs.make(self.tuner_class)

    @abstractmethod
    def layout(self, tuner: Tuner) -> PromptLayout:
        """The parameter space and prompt layout of ``tuner``'s candidates."""

    @abstractmethod
    def projection_fingerprint(self, tuner: Tuner) -> str:
        """The fingerprint of every projection the tuner's prompts go through (resume
        regenerates them and checks this)."""

    def manifest_extra(self, tuner: Tuner) -> dict[str, Any]:
        """Keys this method adds to a run's manifest (how to regenerate what it built)."""
        return {}

    def save_artifacts(  # noqa: B027 - optional hook
        self, tuner: Tuner, run_dir: Path, z: np.ndarray[Any, Any]
    ) -> None:
        """Write what this method adds to a finished run's directory beside ``prompt.npy``
        and ``z.npy`` (a probe's head); ``z`` is the selected one."""

    def cost(self, config: TuneConfig, *, has_dev: bool) -> CallCounts:
        """API calls of a run with ``config`` that goes its whole budget (one call per
        candidate scored on the training set, dev calls apart)."""
        pop = config.population
        gens = generations(config.budget, pop)
        checks, dev_max = dev_calls(
            gens,
            pop,
            config.eval_every,
            initial=config.eval_initial,
            has_dev=has_dev,
            mean=config.eval_mean,
        )
        return CallCounts(gens, gens * pop, checks, dev_max)
