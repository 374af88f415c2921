"""The white-box rows with the real ``bbt.whitebox`` on a tiny random causal LM: each trains
with gradients, is scored on the held-out rows and costs no API call."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("peft")

from bbt.client import LocalClient
from bbt.comparison import CompareSettings, compare
from bbt.tuner.data import Example
from bbt.tuner.tasks import get_preset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bbt.testing.tiny_models import build_tiny_causal_lm

    path: Path = build_tiny_causal_lm(tmp_path_factory.mktemp("cmpwb") / "gpt2", "gpt2")
    return path


def test_every_whitebox_row_trains_on_the_local_model(tiny: Path) -> None:
    from bbt.server.hf_causal import HFCausalBackend

    task = get_preset("sst2")
    rows = [Example({"sentence": f"film number {i} was {'good' if i % 2 else 'bad'}"}, i % 2)
            for i in range(24)]  # fmt: skip
    names = ["manual", "whitebox-prompt-tuning", "whitebox-p-tuning-v2", "whitebox-lora"]
    settings = CompareSettings(
        methods=names, seeds=1, k_shot=2, budget=4, n_test=8, n_tokens=2, local_model=str(tiny)
    )
    backend = HFCausalBackend(tiny, num_threads=1)
    try:
        comp = compare(LocalClient(backend), task, rows, settings)
    finally:
        backend.close()
    by_name = {run.method: run for run in comp.runs}
    assert list(by_name) == names
    for name in names[1:]:
        run = by_name[name]
        assert run.metric is not None, name
        assert 0.0 <= run.metric <= 1.0, name
        assert run.fit.calls == 0, name  # gradients on local weights, no API call
        assert run.notes["steps"] > 0, name
        assert run.notes["trainable_params"] > 0, name
