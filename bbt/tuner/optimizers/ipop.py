"""IPOP-CMA-ES (optimiser ``ipop``): CMA-ES restarted with a growing population.

Auger and Hansen (CEC 2005) restart CMA-ES whenever it stops and double the population
each time; a larger population searches more globally. Here the restarts are our own loop
around :class:`~bbt.tuner.optimizers.cma.CMAOptimizer` (pycma's ``fmin`` restarts would
own the objective; the tuner asks and tells). A run restarts when

- pycma reports a termination condition of the current run (``tolx``, ``tolfun``, ...), or
- the current run's best loss has not improved for ``stall_generations`` generations
  (pycma's own stagnation test needs hundreds of generations at d = 500, far beyond an API
  budget of a few thousand calls).

A restart starts from the best z seen so far (not a random point: with p0 at z = 0 and an
API budget, the incumbent is the useful place to widen the search) with the initial step
size, ``factor`` times the population, and a sampler seed derived from the spec's seed and
the restart number. The population grows, so a generation costs more calls after a
restart; the tuner reads :attr:`IPOPOptimizer.popsize` before every generation, and the
budget stays a hard cap.

The state is the current run's CMA-ES state (the codec's JSON + arrays) plus the restart
count, the incumbent and the stall counter: plain data, and a resumed run continues bit for
bit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bbt.tuner.optimizers.base import OptimizerSpec, register
from bbt.tuner.optimizers.cma import AroundCMA, CMAOptimizer, new_strategy

F64 = np.ndarray[Any, np.dtype[np.float64]]

#: The ``format`` of :meth:`IPOPOptimizer.state_dict`.
STATE_FORMAT = "bbt-ipop/1"
#: Generations without a better loss in the current run before a restart.
DEFAULT_STALL_GENERATIONS = 20
#: How much the population grows at each restart (the paper's 2).
DEFAULT_FACTOR = 2


def restart_seed(sampler_seed: int, restart: int) -> int:
    """The sampler seed of run ``restart`` (0: the spec's own, so run 0 is plain CMA-ES)."""
    if restart == 0:
        return sampler_seed
    seq = np.random.SeedSequence([sampler_seed, 0x1909, restart])
    return int(seq.generate_state(1, dtype=np.uint32)[0]) | 1


class IPOPOptimizer(AroundCMA):
    """CMA-ES with restarts at ``factor`` times the population (see the module docstring).

    Until its first restart it asks exactly what ``cma`` asks from the same spec.
    """

    def __init__(
        self,
        spec: OptimizerSpec,
        *,
        stall_generations: int = DEFAULT_STALL_GENERATIONS,
        factor: int = DEFAULT_FACTOR,
    ) -> None:
        if stall_generations < 1 or factor < 1:
            raise ValueError("stall_generations and factor must be at least 1")
        self._spec = spec
        self._stall_limit = stall_generations
        self._factor = factor
        self._restarts = 0
        self._stall = 0
        self._run_best = math.inf
        self._best_z: F64 = np.zeros(spec.dim)
        self._best_loss = math.inf
        self._inner = self._new_run(spec.popsize, np.zeros(spec.dim))

    @classmethod
    def from_spec(cls, spec: OptimizerSpec) -> IPOPOptimizer:
        """The registry's factory."""
        return cls(spec)

    def _new_run(self, popsize: int, x0: F64) -> CMAOptimizer:
        s = self._spec
        seed = restart_seed(s.sampler_seed, self._restarts)
        es = new_strategy(s.dim, popsize, s.sigma, seed, s.bound, x0=x0)
        return CMAOptimizer.from_strategy(es, s.bound)

    # ------------------------------------------------------------------ the protocol

    # dim, popsize (the current run's: it grows at every restart), sigma and mean: AroundCMA

    @property
    def pending(self) -> F64 | None:
        return self._inner.pending

    @property
    def restarts(self) -> int:
        """How many times the search restarted."""
        return self._restarts

    def stop(self) -> dict[str, Any]:
        """Nothing: a run that stops is restarted (the budget ends the search)."""
        return {}

    def ask(self) -> F64:
        return self._inner.ask()

    def tell(self, losses: Sequence[float] | F64) -> None:
        pop = self._inner.pending
        self._inner.tell(losses)  # checks the count and finiteness before changing anything
        assert pop is not None
        values = np.asarray(losses, dtype=np.float64)
        i = int(np.argmin(values))
        if values[i] < self._best_loss:
            self._best_loss, self._best_z = float(values[i]), pop[i].copy()
        if values[i] < self._run_best:
            self._run_best, self._stall = float(values[i]), 0
        else:
            self._stall += 1
        if self._stall >= self._stall_limit or self._inner.stop():
            self._restarts += 1
            self._stall, self._run_best = 0, math.inf
            self._inner = self._new_run(self._inner.popsize * self._factor, self._best_z)

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "run": self._inner.state_dict(),
            "restarts": self._restarts,
            "stall": self._stall,
            "run_best": self._run_best if math.isfinite(self._run_best) else None,
            "best_loss": self._best_loss if math.isfinite(self._best_loss) else None,
            "best_z": self._best_z.copy(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not an IPOP-CMA-ES state (format {got!r})")
        self._inner.load_state_dict(state["run"])
        self._restarts = int(state["restarts"])
        self._stall = int(state["stall"])
        run_best, best_loss = state["run_best"], state["best_loss"]
        self._run_best = math.inf if run_best is None else float(run_best)
        self._best_loss = math.inf if best_loss is None else float(best_loss)
        self._best_z = np.array(state["best_z"], dtype=np.float64)


register("ipop", IPOPOptimizer.from_spec)
