"""What an optimiser built around one inner CMA-ES run takes from it (``AroundCMA``)."""

from __future__ import annotations

import numpy as np
import pytest

from bbt.tuner.optimizers import GPOptimizer, IPOPOptimizer, OptimizerSpec

SPEC = OptimizerSpec(dim=7, popsize=5, sigma=0.3, sampler_seed=99)


@pytest.mark.parametrize("name", ["ipop", "gp"])
def test_dim_popsize_sigma_and_mean_are_the_inner_runs(name: str) -> None:
    opt: IPOPOptimizer | GPOptimizer
    if name == "gp":
        pytest.importorskip("sklearn")
        opt = GPOptimizer(SPEC)
    else:
        opt = IPOPOptimizer(SPEC)
    assert (opt.dim, opt.popsize, opt.sigma) == (7, 5, 0.3)
    np.testing.assert_array_equal(opt.mean(), np.zeros(7))
    pop = opt.ask()
    opt.tell(np.arange(len(pop), dtype=np.float64))
    assert opt.sigma == opt._inner.sigma != 0.3
    np.testing.assert_array_equal(opt.mean(), opt._inner.mean())
    assert opt.popsize == opt._inner.popsize == 5
