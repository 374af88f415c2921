"""The fixed-seed mock runs behind the bitwise goldens, shared by the golden tests and
``record_goldens.py``; which recorded values they meet depends on the kernel set
(:mod:`tests.tuner.kernels`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from bbt.client import LocalClient
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.tuner import (
    Example,
    GenerationRecord,
    Task,
    TuneConfig,
    Tuner,
    get_preset,
    sample_k_shot,
    tune,
)

from .conftest import H
from .kernels import SKYLAKEX, KernelSet

DATA = Path(__file__).parent / "data"
Split = tuple[list[Example], list[Example]]


def sha(a: np.ndarray[Any, Any]) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


def _hex(v: Any) -> Any:
    return float(v).hex() if isinstance(v, float) else v


def mock_split() -> Split:
    """The k-shot train/dev split of every golden: the ``split`` fixture, outside pytest."""
    pool = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    return sample_k_shot(pool, 16, 1, 2)


def golden_path(kernels: KernelSet) -> Path:
    """The recorded histories of ``kernels``' set."""
    name = "golden_runs.json" if kernels == SKYLAKEX else f"golden_runs.{kernels.name}.json"
    return DATA / name


def run_case(config: dict[str, Any], task: Task, split: Split) -> dict[str, Any]:
    """A fixed-seed mock run of ``config``, in the shape of a golden case."""
    history: list[dict[str, Any]] = []

    def record(rec: GenerationRecord) -> None:
        history.append({k: _hex(v) for k, v in rec.as_dict().items() if k != "wall_time"})

    service = LocalClient(MockBackend(hidden_size=H))
    tuner = Tuner(service, task, *split, TuneConfig(**config), callbacks=[record])
    sel = tuner.run()
    prompt = tuner.prompts(np.asarray(sel.z)[None])[0]
    selected = {
        "z_sha256": sha(np.asarray(sel.z, dtype=np.float64)),
        "prompt_sha256": sha(prompt),
        "calls": sel.calls,
        "dev_metric": _hex(sel.dev_metric),
        "source": sel.source,
    }
    return {
        "config": config,
        "history": history,
        "selected": selected,
        "calls": tuner.calls,
        "dev_calls": tuner.dev_calls,
        "stop_reason": tuner.stop_reason,
    }


def fixed_seed_bbtv2_run(layers: int = 4) -> tuple[str, float | None]:
    """(sha256 of z, dev metric) of a fixed-seed BBTv2 run on the deep mock."""
    train, dev = mock_split()
    cfg = TuneConfig(n_tokens=5, dim=20, popsize=8, budget=200, eval_every=40, seed=3)
    cfg = TuneConfig(**{**cfg.as_dict(), "method": "bbtv2"})
    service = LocalClient(MockBackend(hidden_size=H, num_layers=layers))
    res = tune(service, get_preset("mock"), train, dev, cfg)
    return sha(np.asarray(res.z, dtype=np.float64)), res.dev_metric
