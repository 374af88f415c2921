"""A Gaussian-process-assisted CMA-ES (optimiser ``gp``): API calls go where a surrogate
expects them to pay.

Every candidate scored is an API call; a Gaussian process over z is nearly free next to
one. Each generation:

1. CMA-ES (:class:`~bbt.tuner.optimizers.cma.CMAOptimizer`, the spec's own sampler) asks
   its population of P.
2. Until the archive holds ``min_points`` scored candidates, or when the surrogate cannot be
   fitted, that population is what is scored (plain CMA-ES: the fallback).
3. Otherwise a GP (scikit-learn's ``GaussianProcessRegressor``: constant x RBF + white
   noise, normalised targets, its hyper-parameters fitted by maximum likelihood) is fitted
   to the archive (the last ``max_points`` candidates and their losses). A pool of
   ``pool_factor`` x P samples of CMA-ES's distribution (its population, plus more drawn
   from N(mean, diag(stds^2)) with this optimiser's own generator) is ranked by the lower
   confidence bound mu - kappa * sd, and the P lowest are scored.
4. CMA-ES is told its own population: the true loss of every member that was scored, the
   GP's posterior mean for the others. Every scored candidate joins the archive.

The pool holds CMA-ES's own population, so with a flat surrogate the search is CMA-ES's;
the other members only add choice. Everything is deterministic from the spec: the GP is
refitted from the archive on every ``ask`` (no fitted model in the state), the pool comes
from a PCG64 generator seeded from ``sampler_seed``, and L-BFGS-B from one start is
deterministic. The state is the CMA-ES state, the archive (arrays) and the generator's
state (integers as strings): a resumed run continues bit for bit.

scikit-learn is imported lazily (the ``gp`` extra); without it the optimiser is refused
with one line saying what to install.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bbt.errors import ConfigurationError
from bbt.tuner.optimizers.base import OptimizerSpec, checked_losses, register
from bbt.tuner.optimizers.cma import AroundCMA, CMAOptimizer, pycma_context

F64 = np.ndarray[Any, np.dtype[np.float64]]

#: The ``format`` of :meth:`GPOptimizer.state_dict`.
STATE_FORMAT = "bbt-gp/1"


def _sklearn_gp() -> Any:
    try:
        from sklearn import gaussian_process
    except ImportError:
        raise ConfigurationError(
            "the gp optimizer needs scikit-learn: pip install 'bbt[gp]'"
        ) from None
    return gaussian_process


class GPOptimizer(AroundCMA):
    """CMA-ES whose candidates a Gaussian process pre-selects (see the module docstring)."""

    def __init__(
        self,
        spec: OptimizerSpec,
        *,
        pool_factor: int = 4,
        kappa: float = 1.0,
        min_points: int | None = None,
        max_points: int = 300,
    ) -> None:
        if pool_factor < 1 or kappa < 0 or max_points < 2:
            raise ValueError("pool_factor >= 1, kappa >= 0 and max_points >= 2 are required")
        self._gp = _sklearn_gp()
        self._spec = spec
        self._pool_factor = pool_factor
        self._kappa = kappa
        self._min_points = 2 * spec.popsize if min_points is None else min_points
        self._max_points = max_points
        self._inner = CMAOptimizer.from_spec(spec)
        seq = np.random.SeedSequence([spec.sampler_seed, 0x6770])
        self._rng = np.random.Generator(np.random.PCG64(seq))
        self._x: F64 = np.zeros((0, spec.dim))
        self._y: F64 = np.zeros(0)
        self._pending: F64 | None = None
        # For the pending generation: CMA-ES's population, which of its members are scored
        # (their row in the pending population, -1 if not) and the GP's mean for the rest.
        self._cma_pop: F64 | None = None
        self._rows: np.ndarray[Any, np.dtype[np.int64]] = np.zeros(0, dtype=np.int64)
        self._predicted: F64 = np.zeros(0)
        self.surrogate_generations = 0

    @classmethod
    def from_spec(cls, spec: OptimizerSpec) -> GPOptimizer:
        """The registry's factory."""
        return cls(spec)

    # ------------------------------------------------------------------ the protocol

    # dim, popsize, sigma and mean: AroundCMA (its inner run's population is the spec's)

    @property
    def pending(self) -> F64 | None:
        return self._pending

    def stop(self) -> dict[str, Any]:
        return self._inner.stop()

    def ask(self) -> F64:
        if self._pending is not None:
            return self._pending
        pop = self._inner.ask()
        p = pop.shape[0]
        self._cma_pop = pop
        self._rows = np.arange(p, dtype=np.int64)
        self._predicted = np.zeros(p)
        self._pending = pop
        if self._y.shape[0] >= self._min_points:
            self._pre_select(pop)
        return self._pending

    def _fit(self) -> Any:
        """The GP fitted to the archive, or None when it cannot be."""
        gp = self._gp
        k = gp.kernels
        scale = self._spec.sigma * math.sqrt(self.dim)
        kernel = k.ConstantKernel(1.0, (1e-3, 1e3)) * k.RBF(
            scale, (1e-2 * scale, 1e2 * scale)
        ) + k.WhiteKernel(1e-2, (1e-6, 1.0))
        model = gp.GaussianProcessRegressor(
            kernel=kernel, normalize_y=True, n_restarts_optimizer=0, random_state=0
        )
        try:
            with pycma_context():  # process-wide warnings, under the one lock
                model.fit(self._x, self._y)
        except (ValueError, np.linalg.LinAlgError):
            return None
        return model

    def _pre_select(self, pop: F64) -> None:
        """Replace the pending population by the P pool members of lowest LCB."""
        model = self._fit()
        if model is None:
            return
        p = pop.shape[0]
        extra = (self._pool_factor - 1) * p
        with pycma_context():
            stds = np.asarray(self._inner.es.stds, dtype=np.float64)
        draws = self._rng.standard_normal((extra, self.dim))
        more = self._inner.mean() + draws * stds
        bound = self._spec.bound
        if bound is not None:
            more = np.clip(more, -bound, bound)
        pool = np.concatenate([pop, more])
        with pycma_context():
            mu, sd = model.predict(pool, return_std=True)
        lcb = np.asarray(mu, dtype=np.float64) - self._kappa * np.asarray(sd, dtype=np.float64)
        chosen = np.sort(np.argsort(lcb, kind="stable")[:p])
        rows = np.full(p, -1, dtype=np.int64)
        for row, j in enumerate(chosen.tolist()):
            if j < p:
                rows[j] = row
        self._rows = rows
        self._predicted = np.asarray(mu[:p], dtype=np.float64)
        self._pending = np.ascontiguousarray(pool[chosen], dtype=np.float64)
        self.surrogate_generations += 1

    def tell(self, losses: Sequence[float] | F64) -> None:
        pop, values = checked_losses(self._pending, losses)
        rows = self._rows
        cma_losses = np.where(rows >= 0, values[np.maximum(rows, 0)], self._predicted)
        self._inner.tell(cma_losses)
        x = np.concatenate([self._x, pop])[-self._max_points :]
        y = np.concatenate([self._y, values])[-self._max_points :]
        self._x, self._y = np.ascontiguousarray(x), np.ascontiguousarray(y)
        self._pending = None
        self._cma_pop = None

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:
            raise RuntimeError("state_dict() between generations only (after tell())")
        rng = self._rng.bit_generator.state
        return {
            "format": STATE_FORMAT,
            "cma": self._inner.state_dict(),
            "x": self._x.copy(),
            "y": self._y.copy(),
            "rng": {
                "state": str(rng["state"]["state"]),
                "inc": str(rng["state"]["inc"]),
                "has_uint32": int(rng["has_uint32"]),
                "uinteger": int(rng["uinteger"]),
            },
            "surrogate_generations": self.surrogate_generations,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"not a GP-CMA-ES state (format {got!r})")
        self._inner.load_state_dict(state["cma"])
        self._x = np.array(state["x"], dtype=np.float64).reshape(-1, self.dim)
        self._y = np.array(state["y"], dtype=np.float64).reshape(-1)
        r = state["rng"]
        self._rng.bit_generator.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(r["state"]), "inc": int(r["inc"])},
            "has_uint32": int(r["has_uint32"]),
            "uinteger": int(r["uinteger"]),
        }
        self.surrogate_generations = int(state["surrogate_generations"])
        self._pending = None


register("gp", GPOptimizer.from_spec)
