"""How these run directories were made: interrupted runs written by bbt before issue 19
(format-2 checkpoints, BBTCKPT2: a pickle sealed under another user's key).

Run from a checkout of that bbt (git archive 19b42c0 bbt | tar -x -C OLD), pinned to the
goldens' kernels (tests/tuner/kernels.py), so a resume under them continues bit for bit::

    OPENBLAS_CORETYPE=SkylakeX OPENBLAS_NUM_THREADS=2 BBT_HOME=$(mktemp -d) \\
        PYTHONPATH=OLD python tests/tuner/data/f05a715_runs/make.py OUT
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

from bbt.client import LocalClient
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.tuner import Example, TuneConfig, get_preset, sample_k_shot, tune

H = 32
SMALL: dict[str, Any] = {"n_tokens": 5, "dim": 20, "popsize": 8, "seed": 3}
#: name: (config, layers of the mock, generations before the interruption)
CASES: dict[str, tuple[dict[str, Any], int, int]] = {
    "bbt": ({**SMALL, "budget": 160, "eval_every": 40, "eval_mean": True}, 1, 5),
    "bbt_bounded": (
        {**SMALL, "dim": 12, "popsize": 6, "budget": 120, "eval_every": 24, "bound": 2.0},
        1,
        6,
    ),
    "bbtv2": ({**SMALL, "budget": 120, "eval_every": 16, "method": "bbtv2"}, 4, 6),
}


def split() -> tuple[list[Example], list[Example]]:
    rows = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    return sample_k_shot(rows, 16, 1, 2)


def service(layers: int) -> LocalClient:
    if layers > 1:
        return LocalClient(MockBackend(hidden_size=H, num_layers=layers))
    return LocalClient(MockBackend(hidden_size=H))


def main(out: Path) -> None:
    for name, (cfg, layers, gens) in CASES.items():

        def stop(rec: Any, gens: int = gens) -> None:
            if rec.generation >= gens:
                raise KeyboardInterrupt

        with contextlib.suppress(KeyboardInterrupt):
            tune(
                service(layers),
                get_preset("mock"),
                *split(),
                TuneConfig(**cfg),
                run_dir=out / name,
                callbacks=[stop],
                plot=False,
            )
        (out / name / "run.lock").unlink()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
