"""Where :class:`CMAOptimizer` lived up to f05a715; CMA-ES is
:mod:`bbt.tuner.optimizers.cma` now. Kept for code written against that path: its
:class:`CMAOptimizer` adds the pickled ``blob`` of those days (``blob``, ``from_blob``) on
top of today's class; and pickles of older bbt that name ``bbt.tuner.optimizer._TPA`` still
find the class.
"""

from __future__ import annotations

import pickle
from typing import Any

from bbt.tuner import _legacy
from bbt.tuner.optimizers import cma
from bbt.tuner.optimizers.cma import cma_seed, import_cma, new_strategy

__all__ = ["CMAOptimizer", "cma_seed", "import_cma", "new_strategy"]


class CMAOptimizer(cma.CMAOptimizer):
    """:class:`bbt.tuner.optimizers.CMAOptimizer` with the pickle blob of bbt up to f05a715."""

    @classmethod
    def from_blob(cls, blob: bytes, bound: float | None = None) -> CMAOptimizer:
        """The optimiser whose :attr:`blob` was ``blob``, read by the legacy reader (a pickle:
        trusted data only)."""
        opt = _legacy.cma_from_blob(cls, blob, bound)
        assert isinstance(opt, CMAOptimizer)
        return opt

    @property
    def blob(self) -> bytes:
        """The live strategy pickled, as bbt up to f05a715 stored it."""
        with cma.pycma_context():
            return pickle.dumps(self.es, protocol=pickle.HIGHEST_PROTOCOL)


def __getattr__(name: str) -> Any:
    if name == "_TPA":
        return cma._TPA  # built on first use by that module's __getattr__
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
