"""Pre-training writes a run directory that --init run:DIR reads on the same model, and that
a service of another model refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.server.mock import MockBackend
from bbt.tuner import Example, InitialPrompt, get_preset
from bbt.tuner.manifest import read_manifest
from bbt.tuner.prompts import build_initial_prompt
from bbt.tuner.transfer import model_fingerprint
from bbt.whitebox.pretrain import pretrain_prompt, save_pretrained

ROWS = [Example({"sentence": w}, label=y) for w, y in [("great movie", 1), ("bad film", 0)] * 3]


def test_a_pretrained_prompt_starts_a_run_on_its_model_only(tmp_path: Path) -> None:
    from bbt.server.hf_causal import HFCausalBackend
    from bbt.testing.tiny_models import build_tiny_causal_lm

    model = build_tiny_causal_lm(tmp_path / "gpt2", "gpt2")
    pre = pretrain_prompt(
        get_preset("sst2"), ROWS, ROWS[:2], model_dir=str(model), n_tokens=3, steps=2,
        source_name="toy",
    )  # fmt: skip
    run = save_pretrained(pre, tmp_path / "pre")
    manifest = read_manifest(run)
    meta = manifest["pretrain"]
    assert meta["source_task"] == "toy"
    assert meta["tokens"] == 3
    assert meta["steps"] == 2
    assert meta["source_accuracy"] in (0.0, 0.5, 1.0)
    service = LocalClient(HFCausalBackend(model))
    assert meta["fingerprint"] == model_fingerprint(service.model_info())
    p0, recipe = build_initial_prompt(InitialPrompt.parse(f"run:{run}"), service, 3)
    np.testing.assert_array_equal(p0, pre.prompt)
    assert recipe.model == meta["fingerprint"]
    with pytest.raises(ConfigurationError, match="another model"):
        build_initial_prompt(
            InitialPrompt.parse(f"run:{run}"), LocalClient(MockBackend(hidden_size=32)), 3
        )
    with pytest.raises(ConfigurationError, match="already holds a run"):
        save_pretrained(pre, run)
