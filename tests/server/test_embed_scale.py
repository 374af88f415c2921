"""bbt.server._embed_scale: Gemma's sqrt(H) embedding scale in the causal backend, on a tiny
random Gemma 3 (the tiny Llama's tokenizer, a Gemma3ForCausalLM in its place)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import torch
import transformers

from bbt.server.hf_causal import HFCausalBackend
from bbt.testing.tiny_models import build_tiny_causal_lm

H = 32


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = build_tiny_causal_lm(tmp_path_factory.mktemp("gemma3"), "llama", hidden_size=H)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    config = transformers.Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=H,
        intermediate_size=2 * H,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        max_position_embeddings=128,
        sliding_window=16,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(config).eval()
    for f in out.glob("*.safetensors"):
        f.unlink()
    model.save_pretrained(out)
    return out, model


def test_embedding_rows_and_statistics_are_in_the_scaled_space(gemma: tuple[Path, Any]) -> None:
    path, model = gemma
    backend = HFCausalBackend(path, dtype="float32", device="cpu")
    weight = model.get_input_embeddings().weight.detach()
    ids = np.array([3, 7, 11])
    np.testing.assert_array_equal(
        backend.embed(ids), model.get_input_embeddings()(torch.as_tensor(ids)).detach().numpy()
    )
    np.testing.assert_allclose(
        backend.embed(ids), weight[ids].numpy() * math.sqrt(H), rtol=1e-6, atol=1e-6
    )
    assert backend.info.embedding_std == pytest.approx(float(weight.std()) * math.sqrt(H), 1e-5)


def test_a_prompt_of_token_rows_scores_as_those_tokens_in_the_text(
    gemma: tuple[Path, Any],
) -> None:
    """A soft prompt made of embed() rows must give the model what the same tokens written
    in the input give it: true only when text rows and prompt share Gemma's scaling."""
    path, model = gemma
    backend = HFCausalBackend(path, dtype="float32", device="cpu")
    tok = transformers.AutoTokenizer.from_pretrained(path)
    prompt_ids = tok(" great movie", add_special_tokens=False)["input_ids"]
    text = " It was"
    body = tok(text, add_special_tokens=False)["input_ids"]
    cand = np.array(tok(" good bad", add_special_tokens=False)["input_ids"])
    prompt = backend.embed(np.array(prompt_ids))[None]
    got, _ = backend.logits(prompt, [text], cand)
    full = torch.tensor([list(backend.bos_ids) + prompt_ids + body])
    with torch.inference_mode():
        want = model(input_ids=full).logits[0, -1, torch.as_tensor(cand)].numpy()
    np.testing.assert_allclose(got[0, 0], want, rtol=1e-4, atol=1e-5)
    # The unscaled rows (what the backend sent before) give another answer.
    raw = model.get_input_embeddings().weight.detach()[prompt_ids].numpy()[None]
    off, _ = backend.logits(raw, [text], cand)
    assert not np.allclose(off[0, 0], want, rtol=1e-3, atol=1e-4)
