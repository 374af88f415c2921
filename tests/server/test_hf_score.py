"""Prompt log-probabilities (protocol 1.6) of the Hugging Face causal backend, on tiny
random GPT-2 (no BOS) and Llama (BOS) models built in the test: the sums match a plain
forward pass with a log-softmax by hand, batched or alone."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import torch
import transformers

from bbt.protocol import SCORE_CAPABILITY
from bbt.server import _hf_score
from bbt.server.hf_causal import HFCausalBackend
from bbt.testing.tiny_models import build_tiny_causal_lm

TEXTS = [
    "Review: the movie was great\nSentiment: good",
    "bad",
    "Review: it was a boring plot and the acting was the worst of the year\nSentiment: bad",
    "Review: fun",
]


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("score") / request.param, request.param)


def _by_hand(path: Path, text: str) -> tuple[float, int]:
    tok = transformers.AutoTokenizer.from_pretrained(path)
    lm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with_specials = tok(text, add_special_tokens=True)["input_ids"]
    n_special = len(with_specials) - len(tok(text, add_special_tokens=False)["input_ids"])
    ids = torch.tensor(with_specials)[None]
    with torch.no_grad():
        logp = torch.log_softmax(lm(input_ids=ids).logits[0, :-1], dim=-1)
    picked = logp.gather(-1, ids[0, 1:, None])[:, 0]
    first = max(n_special, 1)  # positions before it are special tokens or unpredictable
    return float(picked[first - 1 :].sum()), len(with_specials) - first


def test_scores_match_a_forward_pass_by_hand_alone_or_batched(
    model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = HFCausalBackend(model, num_threads=1, dtype="float32")
    assert SCORE_CAPABILITY in backend.info.capabilities
    sums, counts, usage = backend.score(TEXTS)
    for text, s, c in zip(TEXTS, sums, counts, strict=True):
        want, n = _by_hand(model, text)
        assert c == n
        assert s == pytest.approx(want, rel=1e-5, abs=1e-4)
        assert backend.score([text])[0][0] == pytest.approx(s, rel=1e-5, abs=1e-4)
    assert usage.sequences == len(TEXTS)
    # A budget of one text a pass changes nothing but the padding.
    monkeypatch.setattr(_hf_score, "SCORE_TOKEN_BUDGET", 1)
    again, _, _ = backend.score(TEXTS)
    assert again == pytest.approx(sums, rel=1e-5, abs=1e-4)


def test_a_text_too_long_loses_its_start(model: Path) -> None:
    backend = HFCausalBackend(model, num_threads=1, dtype="float32")
    long_text = " ".join(["word"] * 4 * backend.info.max_sequence_length)
    (_,), (count,), _ = backend.score([long_text])
    assert count == backend.info.max_sequence_length - 1
