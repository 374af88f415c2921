"""Optimisers over z: a protocol, a registry (and the ``bbt.optimizers`` entry points), and
bbt's own: CMA-ES (``cma``), sep-CMA-ES (``sepcma``), IPOP-CMA-ES (``ipop``), GP-assisted CMA-ES
(``gp``, scikit-learn imported when one is built) and BBTv2's layer-wise schedule."""

from bbt.tuner.optimizers.base import (
    ENTRY_POINT_GROUP,
    Optimizer,
    OptimizerFactory,
    OptimizerSpec,
    available,
    get,
    make,
    refresh,
    register,
)
from bbt.tuner.optimizers.cma import CMAOptimizer, cma_seed
from bbt.tuner.optimizers.gp import GPOptimizer
from bbt.tuner.optimizers.ipop import IPOPOptimizer
from bbt.tuner.optimizers.layerwise import LayerSchedule, LayerwiseOptimizer
from bbt.tuner.optimizers.sepcma import SepCMAOptimizer

__all__ = [
    "ENTRY_POINT_GROUP",
    "CMAOptimizer",
    "GPOptimizer",
    "IPOPOptimizer",
    "LayerSchedule",
    "LayerwiseOptimizer",
    "Optimizer",
    "OptimizerFactory",
    "OptimizerSpec",
    "SepCMAOptimizer",
    "available",
    "cma_seed",
    "get",
    "make",
    "refresh",
    "register",
]
