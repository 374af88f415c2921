"""sep-CMA-ES: pycma's diagonal option behind the ``sepcma`` name; it tunes on the mock."""

from __future__ import annotations

import numpy as np

from bbt.client import LocalClient
from bbt.server.mock import MockBackend
from bbt.tuner import Example, GenerationRecord, Task, Tuner
from bbt.tuner.optimizers import OptimizerSpec, SepCMAOptimizer, make

from ..conftest import H, small_config

Split = tuple[list[Example], list[Example]]


def test_sepcma_is_pycma_with_a_diagonal_covariance() -> None:
    opt = make("sepcma", OptimizerSpec(10, 6, 1.0, 7))
    assert isinstance(opt, SepCMAOptimizer)
    assert opt.es.opts["CMA_diagonal"] is True
    full = make("cma", OptimizerSpec(10, 6, 1.0, 7))
    # pycma samples sep-CMA from a diagonal (D only) and CMA-ES from a full matrix (B D).
    assert type(opt.es.sm).__name__ == "GaussStandardConstant"
    assert type(full.es.sm).__name__ == "GaussFullSampler"
    # Same seed, same first population; the adaptation differs from then on.
    for _ in range(3):
        for o in (opt, full):
            pop = o.ask()
            o.tell(((pop - 0.3) ** 2).sum(axis=1))
    assert not np.array_equal(opt.ask(), full.ask())


def test_sepcma_tunes_the_mock_and_improves_the_train_loss(mock_task: Task, split: Split) -> None:
    history: list[GenerationRecord] = []
    service = LocalClient(MockBackend(hidden_size=H))
    cfg = small_config(optimizer="sepcma", budget=240)
    tuner = Tuner(service, mock_task, *split, cfg, callbacks=[history.append])
    sel = tuner.run()
    assert isinstance(tuner.optimizer, SepCMAOptimizer)
    assert history[-1].best_loss < history[0].loss_mean
    assert sel.dev_metric is not None
