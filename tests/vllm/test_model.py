"""Model facts vLLM does not report: hidden size, vocabulary, embedding statistics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from bbt.errors import ConfigurationError
from bbt.vllm import load_embedding_table, model_facts, read_config

TABLE = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32) * 0.1


def test_config_json_gives_hidden_size_vocab_and_layers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(
        json.dumps({"hidden_size": 8, "vocab_size": 50, "num_hidden_layers": 3})
    )
    facts = model_facts(
        config=read_config(tmp_path),
        table=None,
        hidden_size=None,
        embedding_std=0.2,
        vocab_size=None,
    )
    assert (facts.hidden_size, facts.vocab_size, facts.num_layers) == (8, 50, 3)
    assert facts.embedding_std == 0.2


def test_gpt2_style_names_and_the_table_statistics() -> None:
    facts = model_facts(
        config={"n_embd": 8, "n_layer": 2, "vocab_size": 50},
        table=TABLE,
        hidden_size=None,
        embedding_std=None,
        vocab_size=None,
    )
    assert facts.hidden_size == 8
    assert facts.num_layers == 2
    assert facts.embedding_std == pytest.approx(float(TABLE.std()))
    assert facts.std_source == "embedding table"


def test_hidden_size_mismatch_is_one_clear_error() -> None:
    with pytest.raises(ConfigurationError, match="hidden-size mismatch") as info:
        model_facts(
            config={"hidden_size": 4096, "vocab_size": 50},
            table=TABLE,
            hidden_size=None,
            embedding_std=None,
            vocab_size=None,
        )
    assert "config.json says 4096" in str(info.value)
    assert "columns says 8" in str(info.value)


def test_missing_hidden_size_and_std_say_what_to_give() -> None:
    with pytest.raises(ConfigurationError, match=r"hidden size is unknown.*config\.json"):
        model_facts(config=None, table=None, hidden_size=None, embedding_std=None, vocab_size=None)
    with pytest.raises(ConfigurationError, match="embedding std is unknown"):
        model_facts(
            config={"hidden_size": 8, "vocab_size": 50},
            table=None,
            hidden_size=None,
            embedding_std=None,
            vocab_size=None,
        )


def test_initializer_range_is_a_last_resort_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="bbt.vllm"):
        facts = model_facts(
            config={"hidden_size": 8, "vocab_size": 50, "initializer_range": 0.02},
            table=None,
            hidden_size=None,
            embedding_std=None,
            vocab_size=None,
        )
    assert facts.embedding_std == 0.02
    assert "initializer_range" in caplog.text


@pytest.mark.parametrize("suffix", [".npy", ".safetensors", ".pt"])
def test_embedding_table_formats(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"emb{suffix}"
    if suffix == ".npy":
        np.save(path, TABLE)
    elif suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({"model.embed_tokens.weight": TABLE, "other": np.zeros(3, np.float32)}, str(path))
    else:
        import torch

        torch.save({"transformer.wte.weight": torch.from_numpy(TABLE)}, path)
    np.testing.assert_array_equal(load_embedding_table(path), TABLE)


def test_bad_table_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_embedding_table(tmp_path / "none.npy")
    np.save(tmp_path / "v.npy", np.zeros(5, np.float32))
    with pytest.raises(ConfigurationError, match=r"expected \[vocab_size, hidden_size\]"):
        load_embedding_table(tmp_path / "v.npy")
    (tmp_path / "t.txt").write_text("x")
    with pytest.raises(ConfigurationError, match="unknown format"):
        load_embedding_table(tmp_path / "t.txt")
