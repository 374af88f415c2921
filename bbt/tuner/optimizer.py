"""Where :class:`CMAOptimizer` lived up to f05a715; it is :mod:`bbt.tuner.optimizers.cma`
now. Kept so that imports of that path, and pickles of older bbt that name
``bbt.tuner.optimizer._TPA``, keep working."""

from __future__ import annotations

from typing import Any

from bbt.tuner.optimizers.cma import CMAOptimizer, cma_seed, import_cma, new_strategy

__all__ = ["CMAOptimizer", "cma_seed", "import_cma", "new_strategy"]


def __getattr__(name: str) -> Any:
    if name == "_TPA":
        from bbt.tuner.optimizers import cma

        return cma._TPA  # built on first use by that module's __getattr__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
