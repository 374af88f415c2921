"""The legacy reader: the one place in bbt that loads a pickle.

bbt up to f05a715 (the first parent of issue 19's redesign) pickled its checkpoints: a dict
whose tuner state is a pickle of ``bbt.tuner.tuner._State`` holding the optimiser as a pickle
of its pycma strategy (BBTv2: of ``(bbt.tuner.bbtv2._Schedule, popsize)`` with a pickled
strategy per layer). :func:`convert_legacy` turns such a checkpoint into today's explicit
contents (:mod:`bbt.tuner.checkpoint`, format 3), so the rest of bbt never meets a pickle.
Its callers decide first whether the bytes may be loaded at all: authenticated under this
user's key, or trusted explicitly (``--trust-checkpoint``).
"""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np

from bbt.tuner._state import STATE_VERSION, pack_state
from bbt.tuner.optimizers.cma import CMAOptimizer, pycma_context
from bbt.tuner.optimizers.layerwise import STATE_FORMAT as LAYERWISE_FORMAT


def unpickle_legacy(data: bytes) -> Any:
    """The legacy reader's one load: a pickle written by bbt up to f05a715. Called only on
    bytes that are authenticated under this user's key or trusted explicitly."""
    try:
        with pycma_context():  # strategies unpickle under pycma's lock, warnings quiet
            return pickle.loads(data)
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
        raise ValueError(f"damaged legacy checkpoint: {type(exc).__name__}: {exc}") from None


def convert_legacy(data: Any) -> dict[str, Any]:
    """The contents of a format 1 or 2 checkpoint (its unpickled dict) as format 3."""
    if not isinstance(data, dict) or data.get("format") not in (1, 2):
        fmt = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"checkpoint format {fmt!r}")
    tuner = data["tuner"]
    version = tuner.get("version") if isinstance(tuner, dict) else None
    if version == 1:  # the tuner's state, itself a pickle, with the optimiser's inside
        state = unpickle_legacy(tuner["state"])
        tuner = pack_state(state, _legacy_optimizer_state(unpickle_legacy(state.es_blob)))
    elif version != STATE_VERSION:  # (a pickle around today's data needs no conversion)
        raise ValueError("unsupported checkpoint version")
    return {
        "format": 3,
        "tuner": tuner,
        "history_offset": int(data["history_offset"]),
        "usage": dict(data["usage"]),
        "generation": int(data["generation"]),
    }


def _cma_state(es: Any) -> dict[str, Any]:
    return CMAOptimizer.from_strategy(es).state_dict()


def _legacy_optimizer_state(obj: Any) -> dict[str, Any]:
    """An optimiser's state dict from its legacy pickle: a pycma strategy (BBT), or BBTv2's
    ``(_Schedule, popsize)`` whose layers are pickles themselves."""
    if not isinstance(obj, tuple):
        return _cma_state(obj)
    sched, _popsize = obj
    return {
        "format": LAYERWISE_FORMAT,
        "layers": [_cma_state(unpickle_legacy(b)) for b in sched.blobs],
        "held": np.asarray(sched.held, dtype=np.float64),
        "held_loss": [float(v) for v in sched.held_loss],
        "means": np.asarray(sched.means, dtype=np.float64),
        "sigmas": [float(v) for v in sched.sigmas],
        "stops": [dict(x) for x in sched.stops],
        "layer_generations": int(sched.layer_generations),
        "active": int(sched.active),
        "visit": int(sched.visit),
        "generation": int(sched.generation),
        "last": int(sched.last),
    }


def cma_from_blob(cls: type[CMAOptimizer], blob: bytes, bound: float | None) -> CMAOptimizer:
    """A ``cls`` continuing the strategy of a legacy pickle blob (``CMAOptimizer.blob`` of
    bbt up to f05a715)."""
    return cls.from_strategy(unpickle_legacy(blob), bound)
