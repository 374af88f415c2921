"""The hyper-parameters of one run (:class:`TuneConfig`), with the paper's defaults, checked
when made. Which methods a config may name is the method registry's to say
(:data:`METHOD_NAMES`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from bbt.errors import ConfigurationError
from bbt.tuner import optimizers
from bbt.tuner.losses import LOSSES
from bbt.tuner.projection import Distribution, ProjectionRecipe

# Defaults of the paper (Sun et al., 2022, Sec. 4.1 and their released code).
DEFAULT_N_TOKENS = 50
DEFAULT_DIM = 500
DEFAULT_POPSIZE = 20
DEFAULT_SIGMA = 1.0
DEFAULT_ALPHA = 1.0
DEFAULT_BUDGET = 8000
DEFAULT_EVAL_EVERY = 100
DEFAULT_LOSS = "ce"
DEFAULT_SEED = 42
DEFAULT_EVAL_MEAN = False
#: The built-in tuning methods: BBT (one prompt at the input) and BBTv2 (a prompt at every
#: layer, layer-wise CMA-ES; bbt.tuner.bbtv2). Which names a config takes is the registry's
#: to say (bbt.tuner.methods.available()): a registered method is valid too.
METHODS: tuple[str, ...] = ("bbt", "bbtv2", "probe", "probe-tuned", "mixture")
#: Every method name a config may take, in registration order: the built-in ones, then those
#: that bbt.tuner.methods.register adds (the registry keeps this list; it imports this
#: module, not the other way round, so a config needs no tuner to be checked).
METHOD_NAMES: list[str] = list(METHODS)


@dataclass(frozen=True)
class TuneConfig:
    """Hyper-parameters of one run. ``None`` for ``popsize`` means pycma's default
    4 + floor(3 ln d) (Hansen, 2016); the paper sets 20."""

    n_tokens: int = DEFAULT_N_TOKENS
    dim: int = DEFAULT_DIM
    popsize: int | None = DEFAULT_POPSIZE
    sigma: float = DEFAULT_SIGMA
    alpha: float = DEFAULT_ALPHA
    bound: float | None = None
    budget: int = DEFAULT_BUDGET
    loss: str = DEFAULT_LOSS
    eval_every: int = DEFAULT_EVAL_EVERY
    patience: int | None = None
    # Stop when the dev selection has not improved for this many calls (bbt.tuner.stopping).
    patience_calls: int | None = None
    # Stop when an upper confidence bound on the next stop_window dev checks' gain is below
    # this (a metric difference), once stop_min_calls are spent (bbt.tuner.stopping).
    stop_ucb: float | None = None
    stop_window: int = 4
    stop_min_calls: int = 0
    seed: int = DEFAULT_SEED
    projection: Distribution = "normal"
    eval_initial: bool = True
    # Also score the CMA-ES mean on dev at every dev check (one extra dev call) and let it
    # compete in the selection. A manifest written before this field existed loads with
    # False (see from_dict), so an old run resumes with the behaviour it started with.
    eval_mean: bool = DEFAULT_EVAL_MEAN
    # BBTv2 (bbt/tuner/bbtv2.py): the method, and how many generations each layer runs per
    # turn (the paper's code: 1). Older manifests have neither: BBT, as they were run.
    method: str = "bbt"
    layer_generations: int = 1
    # How candidates reach the service: "auto" uses a projection session (protocol 1.1, z on
    # the wire) when the service offers them, "on" requires one, "off" sends full prompts.
    # Results are the same either way; a manifest without the field loads with "auto".
    sessions: str = "auto"
    # The optimiser, by registry name (bbt.tuner.optimizers); manifests without the field
    # were tuned with CMA-ES.
    optimizer: str = "cma"
    # The readout (bbt.tuner.readout): several label words per class (LABEL=W|W,...), contextual
    # calibration, and a search of N label words per class on the training shots (recorded
    # back as label_words). Manifests without them: the task's one word per class, as run.
    label_words: str | None = None
    calibrate: bool = False
    search_label_words: int = 0

    def __post_init__(self) -> None:
        problems = [*self._size_problems(), *self._schedule_problems(), *self._choice_problems()]
        if problems:
            raise ConfigurationError("; ".join(problems))

    def _size_problems(self) -> list[str]:
        """The prompt, the search space and the CMA-ES step (in the order messages name them)."""
        problems = []
        if self.optimizer not in optimizers.available():
            problems.append(
                f"unknown optimizer {self.optimizer!r}; available: "
                + ", ".join(optimizers.available())
            )
        if self.method not in METHOD_NAMES:
            problems.append(f"method must be one of {', '.join(METHOD_NAMES)}")
        if self.layer_generations < 1:
            problems.append("layer_generations must be at least 1")
        if self.n_tokens < 1:
            problems.append("n (prompt tokens) must be at least 1")
        if self.dim < 1:
            problems.append("d (intrinsic dimension) must be at least 1")
        if self.popsize is not None and self.popsize < 2:
            problems.append("popsize must be at least 2")
        if not self.sigma > 0:
            problems.append("sigma must be positive")
        if not self.alpha > 0:
            problems.append("alpha must be positive")
        if self.bound is not None and not self.bound > 0:
            problems.append("bound must be positive (or unset)")
        return problems

    def _schedule_problems(self) -> list[str]:
        """The budget, the loss and the dev checks."""
        problems = []
        if self.budget < 1:
            problems.append("budget must be at least 1 API call")
        elif (
            self.dim >= 1
            and (self.popsize is None or self.popsize >= 2)
            and self.budget < self.population
        ):
            # Not one generation fits: the run would spend nothing and select nothing.
            problems.append(
                f"budget {self.budget} is below one generation ({self.population} "
                "candidates, one API call each): raise the budget or lower popsize"
            )
        if self.loss not in LOSSES:
            problems.append(f"loss must be one of {', '.join(LOSSES)}")
        if self.eval_every < 1:
            problems.append("eval_every must be at least 1")
        if self.patience is not None and self.patience < 1:
            problems.append("patience must be at least 1 dev evaluation (or unset)")
        if self.patience_calls is not None and self.patience_calls < 1:
            problems.append("patience_calls must be at least 1 API call (or unset)")
        if self.stop_ucb is not None and not (math.isfinite(self.stop_ucb) and self.stop_ucb > 0):
            problems.append("stop_ucb must be a positive metric difference (or unset)")
        if self.stop_window < 2 or self.stop_min_calls < 0:
            problems.append("stop_window must be at least 2 dev checks, stop_min_calls >= 0")
        return problems

    def _choice_problems(self) -> list[str]:
        """The seed and the named choices."""
        problems = []
        if self.seed < 0:
            problems.append("seed must be non-negative")
        if self.projection not in ("normal", "uniform"):
            problems.append("projection must be normal or uniform")
        if not isinstance(self.eval_mean, bool):
            problems.append("eval_mean must be true or false")
        if self.search_label_words < 0:
            problems.append("search_label_words must be 0 (off) or more")
        if self.sessions not in ("auto", "on", "off"):
            problems.append("sessions must be auto, on or off")
        return problems

    @property
    def population(self) -> int:
        return self.popsize if self.popsize is not None else 4 + int(3 * math.log(self.dim))

    def recipe(
        self, hidden_size: int, embedding_std: float, *, seed: int | None = None
    ) -> ProjectionRecipe:
        """The projection recipe of this run for a model of ``hidden_size`` whose prompts are
        scaled from ``embedding_std``. ``seed`` replaces the run's (BBTv2 gives every layer
        its own); BBT and BBTv2 build their recipes here so that they cannot drift apart."""
        return ProjectionRecipe(
            seed=self.seed if seed is None else seed,
            n_tokens=self.n_tokens,
            hidden_size=hidden_size,
            dim=self.dim,
            embedding_std=embedding_std,
            alpha=self.alpha,
            sigma=self.sigma,
            distribution=self.projection,
        )

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TuneConfig:
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        # Configs recorded before eval_mean existed ran without it: keep that on resume.
        kwargs.setdefault("eval_mean", False)
        return cls(**kwargs)
