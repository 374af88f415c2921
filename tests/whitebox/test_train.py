"""White-box training on a tiny random causal LM: each method trains (its loss goes down),
the prompt it returns scores through the server as it scored while training, and bad input
is one clear error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")

from bbt.errors import ConfigurationError
from bbt.tuner import get_preset
from bbt.tuner.data import Example
from bbt.whitebox import WHITEBOX_METHODS, WhiteboxResult, train_whitebox

WORDS = [
    ("great movie", 1), ("bad film", 0), ("loved the story", 1), ("hated the plot", 0),
    ("best acting", 1), ("worst film", 0), ("good fun", 1), ("terrible boring", 0),
]  # fmt: skip
TRAIN = [Example({"sentence": w}, label=y) for w, y in WORDS]
# A random tiny model carries no sentiment, so what any method can learn on it is the label
# prior: with 6 of 8 rows positive the loss can fall from ln 2 toward the prior's entropy
# (0.56), and only if gradients reach the prompt, the prefixes or the adapters.
SKEWED = [Example(e.fields, label=1 if i < 6 else 0) for i, e in enumerate(TRAIN)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bbt.testing.tiny_models import build_tiny_causal_lm

    path: Path = build_tiny_causal_lm(tmp_path_factory.mktemp("wb") / "gpt2", "gpt2")
    return path


@pytest.mark.parametrize("method", WHITEBOX_METHODS)
def test_each_method_lowers_its_training_loss(tiny: Path, method: str) -> None:
    result = train_whitebox(
        method, task=get_preset("sst2"), train=SKEWED, model_dir=str(tiny),
        n_tokens=4, steps=15, lr=0.05, seed=1,
    )  # fmt: skip
    assert isinstance(result, WhiteboxResult)
    assert result.method == method
    assert result.steps == 15
    assert len(result.losses) == 15
    assert result.trainable_params > 0
    assert result.train_seconds > 0
    assert np.mean(result.losses[-3:]) < result.losses[0] - 0.01, result.losses
    pred = result.predict(TRAIN)
    assert pred.shape == (len(TRAIN),)
    assert set(pred.tolist()) <= {0, 1}
    if method == "prompt-tuning":
        assert result.prompt is not None
        assert result.prompt.shape == (4, 32)
    else:
        assert result.prompt is None


def test_a_tuned_prompt_scores_through_the_server_as_in_training(tiny: Path) -> None:
    from bbt.client import LocalClient
    from bbt.server.hf_causal import HFCausalBackend
    from bbt.tuner.tasks import verbalizer_ids

    task = get_preset("sst2")
    result = train_whitebox(
        "prompt-tuning", task=task, train=TRAIN, model_dir=str(tiny), n_tokens=4, steps=3
    )
    assert result.prompt is not None
    service = LocalClient(HFCausalBackend(tiny))
    info = service.model_info()
    texts = [task.render_for(info, e.fields) for e in TRAIN]
    served = service.logits(result.prompt[None], texts, verbalizer_ids(task, service))[0]
    np.testing.assert_allclose(served, result.logits(TRAIN), rtol=1e-4, atol=1e-4)


def test_bad_input_is_a_configuration_error(tiny: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown white-box method"):
        train_whitebox("adapters", task=get_preset("sst2"), train=TRAIN, model_dir=str(tiny))
    with pytest.raises(ConfigurationError, match="labelled"):
        train_whitebox(
            "lora", task=get_preset("sst2"), train=[Example({"sentence": "x"})],
            model_dir=str(tiny),
        )  # fmt: skip
