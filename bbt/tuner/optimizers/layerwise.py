"""BBTv2's divide and conquer (Sun et al., EMNLP 2022) as one optimiser over z in R^(L*d).

:class:`LayerwiseOptimizer` composes L optimisers of any registered kind, one per layer,
taking turns (``layer_generations`` generations each, 0, 1, ..., L-1, 0, ...). ``ask``
returns whole candidates: the active layer's samples with every other layer held at the
best z its own optimiser has seen (0 before its first turn); ``tell`` feeds the losses to
the active layer's optimiser, moves that layer's held z to its best so far and advances the
schedule. :mod:`bbt.tuner.bbtv2` says where each piece comes from in the paper's code.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bbt.tuner.optimizers.base import Optimizer

F64 = np.ndarray[Any, np.dtype[np.float64]]

#: The ``format`` of :meth:`LayerwiseOptimizer.state_dict`.
STATE_FORMAT = "bbt-layerwise/1"


@dataclass
class LayerSchedule:
    """Where the layer-wise schedule stands (read it; do not change it)."""

    held: F64  # [L, d]: the z each layer is held at (its best so far; 0 before its turn)
    held_loss: list[float]
    means: F64  # [L, d]: each layer's mean, as of its last generation
    sigmas: list[float]
    stops: list[dict[str, Any]]
    layer_generations: int
    active: int = 0  # the layer the next generation optimises
    visit: int = 0  # generations it has run in its current turn
    generation: int = 0
    last: int = 0  # the layer the last told generation optimised


class LayerwiseOptimizer:
    """L optimisers taking turns over the layers' blocks of z (see the module docstring).

    ``hold_below``: a layer is held at a candidate only when its loss is below this (the
    tuner passes its non-finite penalty, so a candidate with non-finite scores is never
    held).
    """

    def __init__(
        self,
        layers: Sequence[Optimizer],
        layer_generations: int = 1,
        hold_below: float = math.inf,
    ) -> None:
        if not layers:
            raise ValueError("a layer-wise optimiser needs at least one layer")
        dims = {opt.dim for opt in layers}
        sizes = {opt.popsize for opt in layers}
        if len(dims) != 1 or len(sizes) != 1:
            raise ValueError("every layer's optimiser must have the same dim and popsize")
        if layer_generations < 1:
            raise ValueError("layer_generations must be at least 1")
        self._layers = list(layers)
        self._hold_below = hold_below
        d, count = dims.pop(), len(self._layers)
        self._sched = LayerSchedule(
            held=np.zeros((count, d), dtype=np.float64),
            held_loss=[math.inf] * count,
            means=np.zeros((count, d), dtype=np.float64),
            sigmas=[float(opt.sigma) for opt in self._layers],
            stops=[{} for _ in range(count)],
            layer_generations=layer_generations,
        )
        self._pending: F64 | None = None

    # ------------------------------------------------------------------ state

    @property
    def schedule(self) -> LayerSchedule:
        """Which layer is next, the z each layer is held at (read it; do not change it)."""
        return self._sched

    @property
    def layers(self) -> int:
        return len(self._layers)

    @property
    def layer_optimizers(self) -> list[Optimizer]:
        return list(self._layers)

    @property
    def layer_dim(self) -> int:
        return int(self._sched.held.shape[1])

    @property
    def es(self) -> Any:
        """The active layer's live pycma strategy (CMA-ES layers only)."""
        return getattr(self._layers[self._sched.active], "es", None)

    @property
    def dim(self) -> int:
        return self.layers * self.layer_dim

    @property
    def popsize(self) -> int:
        return self._layers[0].popsize

    @property
    def sigma(self) -> float:
        """Step size of the layer the last generation optimised."""
        return self._sched.sigmas[self._sched.last]

    @property
    def pending(self) -> F64 | None:
        return self._pending

    def mean(self) -> F64:
        """Every layer's mean, concatenated (L * d)."""
        return np.asarray(self._sched.means.reshape(-1), dtype=np.float64).copy()

    def stop(self) -> dict[str, Any]:
        """The stop conditions once *every* layer's optimiser has met one (the paper's code
        runs a fixed number of rounds and keeps asking a converged layer; so does bbt until
        all have converged)."""
        if not all(self._sched.stops):
            return {}
        merged: dict[str, Any] = {}
        for s in self._sched.stops:
            merged.update(s)
        return merged

    def state_dict(self) -> dict[str, Any]:
        if self._pending is not None:
            raise RuntimeError("state_dict() between generations only (after tell())")
        s = self._sched
        return {
            "format": STATE_FORMAT,
            "layers": [opt.state_dict() for opt in self._layers],
            "held": s.held.copy(),
            "held_loss": list(s.held_loss),
            "means": s.means.copy(),
            "sigmas": list(s.sigmas),
            "stops": [dict(x) for x in s.stops],
            "layer_generations": s.layer_generations,
            "active": s.active,
            "visit": s.visit,
            "generation": s.generation,
            "last": s.last,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError("not a BBTv2 layer schedule")
        if len(state["layers"]) != self.layers:
            raise ValueError(f"the schedule has {len(state['layers'])} layers, not {self.layers}")
        for opt, sub in zip(self._layers, state["layers"], strict=True):
            opt.load_state_dict(sub)
        self._sched = LayerSchedule(
            held=np.array(state["held"], dtype=np.float64),
            held_loss=[float(v) for v in state["held_loss"]],
            means=np.array(state["means"], dtype=np.float64),
            sigmas=[float(v) for v in state["sigmas"]],
            stops=[dict(x) for x in state["stops"]],
            layer_generations=int(state["layer_generations"]),
            active=int(state["active"]),
            visit=int(state["visit"]),
            generation=int(state["generation"]),
            last=int(state["last"]),
        )
        self._pending = None

    # ------------------------------------------------------------------ ask / tell

    def ask(self) -> F64:
        if self._pending is None:
            sched = self._sched
            rows = self._layers[sched.active].ask()
            full = np.repeat(sched.held.reshape(1, -1), rows.shape[0], axis=0)
            d = self.layer_dim
            full[:, sched.active * d : (sched.active + 1) * d] = rows
            self._pending = full
        return self._pending

    def tell(self, losses: Sequence[float] | F64) -> None:
        if self._pending is None:
            raise RuntimeError("tell() without a pending ask()")
        sched = self._sched
        layer = sched.active
        live = self._layers[layer]
        rows = live.pending
        assert rows is not None  # asked through self.ask()
        live.tell(losses)  # checks the count and that every loss is finite
        values = np.asarray(losses, dtype=np.float64)
        i = int(np.argmin(values))
        if values[i] < sched.held_loss[layer] and values[i] < self._hold_below:
            sched.held[layer] = rows[i]
            sched.held_loss[layer] = float(values[i])
        sched.means[layer] = live.mean()
        sched.sigmas[layer] = live.sigma
        sched.stops[layer] = live.stop()
        sched.last = layer
        sched.generation += 1
        sched.visit += 1
        if sched.visit >= sched.layer_generations:
            sched.visit = 0
            sched.active = (layer + 1) % self.layers
        self._pending = None
