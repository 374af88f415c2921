"""sep-CMA-ES (optimiser ``sepcma``): CMA-ES with a diagonal covariance matrix.

Ros and Hansen (PPSN 2008): adapting only the diagonal of C costs O(d) per sample instead
of O(d^2) and learns faster in high dimension when the variables are not strongly
correlated; pycma runs it with ``CMA_diagonal=True``. Everything else (seeding, the private
sampling stream, bounds, the state codec, exact resume) is :class:`CMAOptimizer`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from bbt.tuner.optimizers.base import register
from bbt.tuner.optimizers.cma import CMAOptimizer


class SepCMAOptimizer(CMAOptimizer):
    """CMA-ES restricted to a diagonal covariance matrix (pycma's ``CMA_diagonal``)."""

    OPTIONS: ClassVar[Mapping[str, Any]] = {"CMA_diagonal": True}


register("sepcma", SepCMAOptimizer.from_spec)
