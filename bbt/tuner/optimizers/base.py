"""The optimiser protocol and the registry that names optimisers.

An optimiser is pure state over z in R^d: no I/O, no global RNG, its randomness from a
generator of its own seeded by :attr:`OptimizerSpec.sampler_seed`. The :class:`~bbt.tuner.
tuner.Tuner` asks it for a population, scores it and tells it the losses; a checkpoint holds
its :meth:`~Optimizer.state_dict` (JSON-able scalars, lists and dicts, and NumPy arrays:
never a pickle), and :meth:`~Optimizer.load_state_dict` continues from it bit for bit.

Optimisers are chosen by name (``TuneConfig.optimizer``, ``bbt tune --optimizer``). A name
comes from :func:`register` (in code) or from the ``bbt.optimizers`` entry-point group of an
installed distribution, whose object is a factory ``(OptimizerSpec) -> Optimizer``::

    [project.entry-points."bbt.optimizers"]
    myopt = "mypackage.myopt:make"

Entry points are read lazily, the first time a name is looked up that code did not
register, so importing bbt imports no plug-in. bbt's own optimisers register themselves
when this package is imported (its ``__init__`` imports them), so they are there without
installed metadata too (a source checkout on ``PYTHONPATH``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

import numpy as np

from bbt.errors import ConfigurationError

F64 = np.ndarray[Any, np.dtype[np.float64]]

#: The entry-point group third-party optimisers register under.
ENTRY_POINT_GROUP = "bbt.optimizers"


@dataclass(frozen=True)
class OptimizerSpec:
    """What every optimiser is built from.

    ``sampler_seed`` (32-bit) seeds the optimiser's own generator; the caller derives it
    from the run's ``seed`` (BBT: :func:`bbt.tuner.optimizers.cma.cma_seed`; BBTv2: one per
    layer), so two optimisers of one run never share a stream.
    """

    dim: int
    popsize: int
    sigma: float
    sampler_seed: int
    bound: float | None = None


@runtime_checkable
class Optimizer(Protocol):
    """An ask/tell optimiser over z in R^d (lower loss is better).

    ``ask()`` returns the population [popsize, dim] (float64; asked again before ``tell``
    it returns the same one); ``tell(losses)`` takes one finite loss per candidate of that
    population. :meth:`state_dict` is the whole state between generations, RNG included;
    :meth:`load_state_dict` continues from it exactly.
    """

    @property
    def dim(self) -> int: ...

    @property
    def popsize(self) -> int: ...

    @property
    def sigma(self) -> float:
        """The step size (what the history records; NaN where it means nothing)."""
        ...

    @property
    def pending(self) -> F64 | None:
        """The population asked and not told yet."""
        ...

    def mean(self) -> F64:
        """The search distribution's centre as a candidate z."""
        ...

    def stop(self) -> dict[str, Any]:
        """The optimiser's own termination conditions that hold now (empty: go on)."""
        ...

    def ask(self) -> F64: ...

    def tell(self, losses: Sequence[float] | F64) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


OptimizerFactory = Callable[[OptimizerSpec], Optimizer]

_LOCK = threading.Lock()
_REGISTRY: dict[str, OptimizerFactory] = {}
_ENTRY_POINTS: dict[str, metadata.EntryPoint] | None = None


def checked_losses(pending: F64 | None, losses: Sequence[float] | F64) -> tuple[F64, F64]:
    """``tell``'s checks, for an optimiser that keeps its asked population in ``pending``:
    (that population, the losses as float64), one finite loss per candidate."""
    if pending is None:
        raise RuntimeError("tell() without a pending ask()")
    values = np.asarray(losses, dtype=np.float64)
    if values.shape != (pending.shape[0],):
        raise ValueError(f"losses must be {pending.shape[0]} numbers, one per candidate")
    if not np.isfinite(values).all():
        raise ValueError("losses must be finite")
    return pending, values


def register(name: str, factory: OptimizerFactory) -> None:
    """Make ``factory`` the optimiser called ``name`` (replacing one of that name)."""
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"optimiser names are letters, digits, - and _; got {name!r}")
    with _LOCK:
        _REGISTRY[name] = factory


def _entry_points() -> dict[str, metadata.EntryPoint]:
    global _ENTRY_POINTS
    with _LOCK:
        if _ENTRY_POINTS is None:
            _ENTRY_POINTS = {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}
        return _ENTRY_POINTS


def refresh() -> None:
    """Read the entry points again (after installing a plug-in in a running process)."""
    global _ENTRY_POINTS
    with _LOCK:
        _ENTRY_POINTS = None


def available() -> list[str]:
    """Every optimiser name, registered in code or through an entry point, sorted."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def get(name: str) -> OptimizerFactory:
    """The factory of optimiser ``name``; :class:`ConfigurationError` (one line naming the
    available ones) when there is none or its plug-in fails to load."""
    with _LOCK:
        factory = _REGISTRY.get(name)
    if factory is not None:
        return factory
    ep = _entry_points().get(name)
    if ep is None:
        raise ConfigurationError(f"unknown optimizer {name!r}; available: {', '.join(available())}")
    try:
        loaded = ep.load()
    except Exception as exc:  # a plug-in's import error is the user's to see, in one line
        raise ConfigurationError(
            f"the optimizer {name!r} ({ep.value}) failed to load: {type(exc).__name__}: {exc}"
        ) from None
    if not callable(loaded):
        raise ConfigurationError(f"the optimizer {name!r} ({ep.value}) is not a factory")
    register(name, loaded)
    return loaded  # type: ignore[no-any-return]


def make(name: str, spec: OptimizerSpec) -> Optimizer:
    """A new optimiser ``name`` built from ``spec``."""
    return get(name)(spec)
