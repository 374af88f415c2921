"""The Hugging Face causal-LM backend on tiny random GPT-2 and Llama models built in the test.

Nothing is downloaded: :func:`bbt.testing.tiny_models.build_tiny_causal_lm` trains a small
tokenizer and writes a randomly initialised model. The manual forward passes below build
``inputs_embeds`` by hand (BOS, then the prompt, then the text) and read the logits at the
last position, which is what the backend must reproduce however it batches and pads.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import torch
import transformers

from bbt.errors import ConfigurationError
from bbt.protocol import LogitsRequest, ProtocolViolation, Tensor
from bbt.server._cancel import Cancelled
from bbt.server._core import ServiceCore
from bbt.server.hf_causal import HFCausalBackend, detect_model_kind

TEXTS = [
    "Review: the movie was great\nSentiment:",
    "bad",
    "Review: it was a boring plot and the acting was the worst of the year\nSentiment:",
    "Review: fun\nSentiment:",
]
#: Batched and single passes differ in shapes only, hence float32 rounding.
TOL = 1e-5


@pytest.fixture(scope="module")
def backends(tiny_causal_dirs: dict[str, Path]) -> dict[str, HFCausalBackend]:
    return {arch: HFCausalBackend(path, num_threads=1) for arch, path in tiny_causal_dirs.items()}


@pytest.fixture(params=["gpt2", "llama"])
def arch(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _prompts(p: int, n: int, h: int, seed: int = 0) -> np.ndarray[Any, Any]:
    return (np.random.default_rng(seed).standard_normal((p, n, h)) * 0.05).astype(np.float32)


def _manual(path: Path, prompt: np.ndarray[Any, Any], text: str, cand: list[int]) -> Any:
    """Logits at the last position of ``[specials before the text] prompt text``, by hand."""
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with_specials = tok(text, add_special_tokens=True)["input_ids"]
    body = tok(text, add_special_tokens=False)["input_ids"]
    k = len(with_specials) - len(body) if with_specials[-len(body) :] == body else None
    assert k is not None  # the tokenizers here only prepend
    emb = model.get_input_embeddings()
    ids = torch.tensor(with_specials)
    parts = [emb(ids[:k]), torch.from_numpy(prompt), emb(ids[k:])]
    x = torch.cat(parts)[None]
    with torch.no_grad():
        return model(inputs_embeds=x).logits[0, -1, cand].numpy()


def test_info_says_causal_with_no_mask_token(backends: dict[str, HFCausalBackend]) -> None:
    for b in backends.values():
        info = b.info
        assert info.kind == "causal_lm"
        assert (info.mask_token, info.mask_token_id) == (None, None)
        emb = b._word_emb.detach().float()
        assert info.embedding_std == pytest.approx(float(emb.std()))
        assert info.hidden_size == 32
    assert backends["gpt2"].bos_ids == ()  # GPT-2's tokenizer adds no BOS
    llama = backends["llama"]
    assert llama.bos_ids == (llama._tok.bos_token_id,)


def test_prompt_goes_right_after_bos_and_logits_match_a_manual_forward(
    arch: str, backends: dict[str, HFCausalBackend], tiny_causal_dirs: dict[str, Path]
) -> None:
    b = backends[arch]
    cand = [5, 17, 42]
    prompts = _prompts(2, 3, b.info.hidden_size)
    out, usage = b.logits(prompts, TEXTS, np.array(cand))
    for i in range(2):
        for j, text in enumerate(TEXTS):
            want = _manual(tiny_causal_dirs[arch], prompts[i], text, cand)
            np.testing.assert_allclose(out[i, j], want, atol=TOL, rtol=0)
    n_ids = [len(b.encode(t).ids) for t in TEXTS]
    assert usage.tokens == sum((k + 3) * 2 for k in n_ids)


def test_the_prompt_position_matters(backends: dict[str, HFCausalBackend]) -> None:
    # The manual forward above would not notice a prompt put before <s> if the position
    # made no difference: show that it does, for the model with a BOS.
    b = backends["llama"]
    prompt = _prompts(1, 3, b.info.hidden_size, seed=4)[0] * 20
    emb = b._model.get_input_embeddings()
    ids = torch.tensor(b.encode(TEXTS[0]).ids)
    p = torch.from_numpy(prompt)
    with torch.no_grad():
        after = b._model(inputs_embeds=torch.cat([emb(ids[:1]), p, emb(ids[1:])])[None])
        before = b._model(inputs_embeds=torch.cat([p, emb(ids)])[None])
    got, _ = b.logits(prompt[None], [TEXTS[0]], np.arange(20))
    np.testing.assert_allclose(got[0, 0], after.logits[0, -1, :20].numpy(), atol=TOL, rtol=0)
    assert np.abs(got[0, 0] - before.logits[0, -1, :20].numpy()).max() > 1e-3


@pytest.mark.parametrize("budget", [1, 50, 100_000])
def test_a_sequence_scores_the_same_alone_and_in_a_padded_batch(
    arch: str, backends: dict[str, HFCausalBackend], budget: int
) -> None:
    b = backends[arch]
    cand = np.array([3, 8, 13, 21])
    prompts = _prompts(3, 4, b.info.hidden_size, seed=1)
    old = b.token_budget
    b.token_budget = budget  # 1: one sequence per pass; 50: mixed chunks; large: one pass
    try:
        batch, _ = b.logits(prompts, TEXTS, cand)
    finally:
        b.token_budget = old
    for i in range(3):
        for j, text in enumerate(TEXTS):
            alone, _ = b.logits(prompts[i : i + 1], [text], cand)
            np.testing.assert_allclose(batch[i, j], alone[0, 0], atol=TOL, rtol=0)


def test_no_prompt_is_the_plain_model(arch: str, backends: dict[str, HFCausalBackend]) -> None:
    b = backends[arch]
    ids = b.encode(TEXTS[2]).ids
    with torch.no_grad():
        plain = b._model(input_ids=torch.tensor([ids])).logits[0, -1, :10].numpy()
    got, _ = b.logits(np.zeros((1, 0, b.info.hidden_size), np.float32), [TEXTS[2]], np.arange(10))
    np.testing.assert_allclose(got[0, 0], plain, atol=TOL, rtol=0)


def test_an_appended_eos_is_left_out(tiny_causal_dirs: dict[str, Path], tmp_path: Path) -> None:
    # A tokenizer that wraps texts as "<s> text </s>": the EOS would sit between the text
    # and the token being predicted, so the backend must drop it (and keep the BOS).
    path = tmp_path / "eos"
    shutil.copytree(tiny_causal_dirs["llama"], path)
    spec = json.loads((path / "tokenizer.json").read_text())
    bos, eos = 0, 1  # ids of <s> and </s> in the tiny tokenizer (its first specials)
    spec["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [
            {"SpecialToken": {"id": "<s>", "type_id": 0}},
            {"Sequence": {"id": "A", "type_id": 0}},
            {"SpecialToken": {"id": "</s>", "type_id": 0}},
        ],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {
            "<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]},
            "</s>": {"id": "</s>", "ids": [eos], "tokens": ["</s>"]},
        },
    }
    (path / "tokenizer.json").write_text(json.dumps(spec))
    b = HFCausalBackend(path, num_threads=1)
    assert b.tokenize(["fun"], add_special_tokens=True)[0][0][-1] == eos  # it does append
    ids = b.encode("Review: fun").ids
    assert ids[0] == bos
    assert eos not in ids
    plain = HFCausalBackend(tiny_causal_dirs["llama"], num_threads=1)
    prompts = _prompts(1, 2, 32, seed=3)
    a, _ = b.logits(prompts, ["Review: fun"], np.arange(6))
    c, _ = plain.logits(prompts, ["Review: fun"], np.arange(6))
    np.testing.assert_allclose(a, c, atol=TOL, rtol=0)


def test_a_text_too_long_loses_its_start_not_its_end(
    arch: str, backends: dict[str, HFCausalBackend]
) -> None:
    b = backends[arch]
    text = "the movie " * 200 + "was great\nSentiment:"
    full = b.tokenize([text])[0][0]
    enc = b.encode(text, n_prompt_tokens=5)
    assert enc.truncated
    assert len(enc.ids) + 5 == b.info.max_sequence_length
    assert list(enc.ids[len(b.bos_ids) :]) == full[-(len(enc.ids) - len(b.bos_ids)) :]
    assert enc.ids[: len(b.bos_ids)] == b.bos_ids
    out, _ = b.logits(_prompts(1, 5, 32), [text], np.arange(4))
    assert np.isfinite(out).all()


def test_validation_limits_and_errors_go_through_the_app_core(
    backends: dict[str, HFCausalBackend],
) -> None:
    core = ServiceCore(backends["gpt2"])
    info = core.info

    def call(texts: list[str], p: int = 1) -> dict[str, Any]:
        req = LogitsRequest(
            model=info.id,
            prompts=Tensor.from_numpy(_prompts(p, 2, 32)),
            texts=texts,
            candidate_ids=[1, 2],
        )
        resp = core.handle("POST", "/v1/logits", {}, req.model_dump_json().encode())
        return {"status": resp.status, **json.loads(resp.body)}

    ok = call(["no mask here\nSentiment:", "[MASK] is just text"])
    assert ok["status"] == 200
    assert ok["logits"]["shape"] == [1, 2, 2]
    empty = call(["fine", ""])
    assert empty["status"] == 422
    assert "text 1 is empty" in empty["error"]["message"]
    too_many = call(["x"], p=info.limits.max_prompts_per_request + 1)
    assert too_many["status"] == 422
    models = json.loads(core.handle("GET", "/v1/models", {}, b"").body)
    assert models["data"][0]["kind"] == "causal_lm"
    assert models["data"][0]["mask_token"] is None


def test_a_client_that_left_stops_the_work(backends: dict[str, HFCausalBackend]) -> None:
    b = backends["gpt2"]
    with pytest.raises(Cancelled):
        b._run(_prompts(2, 2, 32), TEXTS, np.arange(3), should_stop=lambda: True)


def test_dtype_auto_and_bfloat16(tiny_causal_dirs: dict[str, Path]) -> None:
    auto = HFCausalBackend(tiny_causal_dirs["gpt2"], dtype="auto", num_threads=1)
    assert auto.compute_dtype in ("float32", "bfloat16")
    assert auto.compute_reason
    f32 = HFCausalBackend(tiny_causal_dirs["gpt2"], dtype="float32", num_threads=1)
    bf16 = HFCausalBackend(tiny_causal_dirs["gpt2"], dtype="bfloat16", num_threads=1)
    assert bf16.compute_dtype == "bfloat16"
    prompts = _prompts(2, 3, 32)
    a, _ = f32.logits(prompts, TEXTS, np.arange(8))
    c, _ = bf16.logits(prompts, TEXTS, np.arange(8))
    assert np.abs(a - c).max() < 0.05  # logits of magnitude ~1: bf16's precision


def test_detect_model_kind(tiny_causal_dirs: dict[str, Path], tmp_path: Path) -> None:
    assert detect_model_kind(tiny_causal_dirs["gpt2"]) == "causal_lm"  # GPT2LMHeadModel
    assert detect_model_kind(tiny_causal_dirs["llama"]) == "causal_lm"  # LlamaForCausalLM
    cases = {
        "bert": {"architectures": ["BertForMaskedLM"]},
        "decoder": {"model_type": "bert", "is_decoder": True},
        "encoder": {"architectures": ["BertModel"]},
    }
    for name, config in cases.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps(config))
    assert detect_model_kind(tmp_path / "bert") == "masked_lm"
    assert detect_model_kind(tmp_path / "decoder") == "causal_lm"
    assert detect_model_kind(tmp_path / "encoder") == "masked_lm"
    assert detect_model_kind(tmp_path / "missing") == "masked_lm"
    assert detect_model_kind(None) == "masked_lm"


def test_configuration_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        HFCausalBackend(tmp_path / "nope")
    with pytest.raises(ConfigurationError, match="cannot load a causal LM"):
        HFCausalBackend(tmp_path)


def test_a_text_of_no_tokens_without_bos_is_a_violation(
    backends: dict[str, HFCausalBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Some tokenizers turn whitespace into nothing; GPT-2's does not, so pretend.
    b = backends["gpt2"]
    monkeypatch.setattr(b, "_body_ids", lambda text: ())
    with pytest.raises(ProtocolViolation, match="text 0 has no tokens"):
        b.logits(_prompts(1, 2, 32), ["  "], np.arange(2))
    llama = backends["llama"]  # with a BOS there is a token to score after
    monkeypatch.setattr(llama, "_body_ids", lambda text: ())
    out, _ = llama.logits(_prompts(1, 2, 32), ["  "], np.arange(2))
    assert out.shape == (1, 1, 2)
