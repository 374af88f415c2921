"""What a run's checkpoint holds of the tuner, and its explicit form (no pickle).

:class:`RunState` is everything the :class:`~bbt.tuner.tuner.Tuner` must keep to continue a
run exactly (counters, the best and selected :class:`Candidate`, dev bookkeeping);
:func:`pack_state` writes it with the optimiser's state dict as JSON-able values and NumPy
arrays (what :mod:`bbt.tuner.checkpoint` stores), :func:`unpack_state` reads it back. Both
classes are found by pickles of bbt up to f05a715 under their old names in
:mod:`bbt.tuner.tuner` (``Candidate``, ``_State``), which the legacy reader converts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

F64 = np.ndarray[Any, np.dtype[np.float64]]


@dataclass
class Candidate:
    """A point of the search space and what is known about it."""

    z: F64
    train_loss: float
    calls: int  # API calls spent when it was found
    dev_metric: float | None = None
    dev_ce: float | None = None
    #: "best" (lowest train loss so far), "mean" (the CMA-ES mean, with ``eval_mean``) or
    #: "initial" (p0, z = 0). Pickles without the field read the class default.
    source: str = "best"


@dataclass
class RunState:
    """Everything a checkpoint must hold to continue a run exactly."""

    generation: int = 0
    calls: int = 0
    dev_calls: int = 0
    # The optimiser's pickled strategy in checkpoints of bbt up to f05a715 (the legacy reader
    # converts it); the optimiser's state_dict() replaces it and this stays empty.
    es_blob: bytes = b""
    # NumPy's global RNG state that bbt before the optimiser split swapped in around pycma;
    # kept (None) so that legacy pickles of this class still load.
    rng_state: Any = None
    best_train: Candidate | None = None
    selected: Candidate | None = None
    evaluated_calls: int | None = None  # `calls` of the last candidate scored on dev
    stale_evals: int = 0
    stop_reason: str | None = None
    elapsed: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


#: The ``version`` of :meth:`bbt.tuner.tuner.Tuner.state_dict` (1: a pickle of bbt up to f05a715).
STATE_VERSION = 2


def _pack_candidate(c: Candidate | None) -> dict[str, Any] | None:
    if c is None:
        return None
    return {
        "z": np.asarray(c.z, dtype=np.float64).copy(),
        "train_loss": float(c.train_loss),
        "calls": int(c.calls),
        "dev_metric": None if c.dev_metric is None else float(c.dev_metric),
        "dev_ce": None if c.dev_ce is None else float(c.dev_ce),
        "source": c.source,
    }


def _unpack_candidate(d: dict[str, Any] | None) -> Candidate | None:
    if d is None:
        return None
    return Candidate(
        z=np.array(d["z"], dtype=np.float64),
        train_loss=float(d["train_loss"]),
        calls=int(d["calls"]),
        dev_metric=None if d["dev_metric"] is None else float(d["dev_metric"]),
        dev_ce=None if d["dev_ce"] is None else float(d["dev_ce"]),
        source=str(d["source"]),
    )


def pack_state(
    state: RunState, optimizer_state: dict[str, Any], optimizer: str = "cma"
) -> dict[str, Any]:
    """A tuner's state and its optimiser's as checkpoint data: JSON-able values and arrays.
    (The legacy reader packs a converted pickle of older bbt with it too.)"""
    extra: dict[str, Any] = {}
    for k, v in state.extra.items():
        # A candidate (the last scored mean) is tagged; everything else is a plain number.
        extra[k] = {"candidate": _pack_candidate(v)} if isinstance(v, Candidate) else v
    return {
        "version": STATE_VERSION,
        "optimizer": optimizer,
        "optimizer_state": optimizer_state,
        "state": {
            "generation": state.generation,
            "calls": state.calls,
            "dev_calls": state.dev_calls,
            "best_train": _pack_candidate(state.best_train),
            "selected": _pack_candidate(state.selected),
            "evaluated_calls": state.evaluated_calls,
            "stale_evals": state.stale_evals,
            "stop_reason": state.stop_reason,
            "elapsed": float(state.elapsed),
            "extra": extra,
        },
    }


def unpack_state(d: dict[str, Any]) -> RunState:
    extra: dict[str, Any] = {}
    for k, v in dict(d["extra"]).items():
        extra[k] = _unpack_candidate(v["candidate"]) if isinstance(v, dict) else v
    evaluated = d["evaluated_calls"]
    return RunState(
        generation=int(d["generation"]),
        calls=int(d["calls"]),
        dev_calls=int(d["dev_calls"]),
        best_train=_unpack_candidate(d["best_train"]),
        selected=_unpack_candidate(d["selected"]),
        evaluated_calls=None if evaluated is None else int(evaluated),
        stale_evals=int(d["stale_evals"]),
        stop_reason=d["stop_reason"],
        elapsed=float(d["elapsed"]),
        extra=extra,
    )


def unpack_checkpoint(data: dict[str, Any], optimizer: str) -> tuple[RunState, dict[str, Any]]:
    """The tuner's state and the optimiser's from :func:`pack_state`'s data, for a run
    whose optimiser is ``optimizer``; ValueError for another version or optimiser."""
    if data.get("version") != STATE_VERSION:
        raise ValueError("unsupported checkpoint version")
    name = data.get("optimizer", "cma")
    if name != optimizer:
        raise ValueError(f"the checkpoint's optimizer is {name!r}; this run's is {optimizer!r}")
    return unpack_state(data["state"]), data["optimizer_state"]
