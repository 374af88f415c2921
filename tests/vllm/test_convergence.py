"""BBT converges against the vLLM fake through the adapter, as against the masked mock."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbt.server.mock import sample_mock_dataset
from bbt.testing.vllm_fake import FAKE_BASE_URL, VLLMFake
from bbt.tuner import Example, TuneConfig, get_preset, sample_k_shot, tune
from bbt.vllm import VLLMService


@pytest.mark.slow
def test_tuning_converges_in_embedding_table_mode(vllm_fake: VLLMFake, tmp_path: Path) -> None:
    svc = VLLMService(
        FAKE_BASE_URL,
        hidden_size=64,
        embedding_table=vllm_fake.table,
        transport=vllm_fake.transport(),
        env_file=None,
    )
    pool = [Example({"text": s}, y) for s, y in sample_mock_dataset(200, 0)]
    train, dev = sample_k_shot(pool, 16, 0, 2)
    cfg = TuneConfig(n_tokens=5, dim=50, popsize=10, budget=300, seed=1)
    result = tune(svc, get_preset("mock"), train, dev, cfg, run_dir=tmp_path / "run", plot=False)
    # The mock's decoder template, "{text} It was" + " bad" / " great": chance at p0.
    assert result.initial_dev_metric < 0.6
    assert result.dev_metric >= 0.9
    assert svc.usage.calls >= 300
