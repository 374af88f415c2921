"""The vLLM adapter's ``score`` and ``bbt serve``'s Hugging Face causal backend agree on the
same model: a tiny random GPT-2 (no BOS) and Llama (BOS) answered through a stand-in for
vLLM whose ``prompt_logprobs[t]`` is log p(ids[t] | ids[:t]) from a forward pass of that
model (vLLM's definition), with its tokenizer behind ``/tokenize``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("tokenizers")

import httpx
import numpy as np
import torch
import transformers

from bbt.server.hf_causal import HFCausalBackend
from bbt.testing.tiny_models import build_tiny_causal_lm
from bbt.vllm import VLLMService

TEXTS = [
    "Review: the movie was great\nSentiment: good",
    "bad",
    "Review: it was a boring plot and the acting was the worst of the year\nSentiment: bad",
    "Review: fun",
]
MAX_LEN = 128


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal_lm(tmp_path_factory.mktemp("vscore") / request.param, request.param)


def _transport(path: Path) -> httpx.MockTransport:
    tok = transformers.AutoTokenizer.from_pretrained(path)
    lm = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()

    def prompt_logprobs(ids: list[int]) -> list[dict[str, Any] | None]:
        with torch.no_grad():
            logp = torch.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0], dim=-1)
        return [None] + [
            {str(ids[t]): {"logprob": float(logp[t - 1, ids[t]]), "rank": 1}}
            for t in range(1, len(ids))
        ]

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/version":
            return httpx.Response(200, json={"version": "0.34.0"})
        if path == "/v1/models":
            return httpx.Response(200, json={"data": [{"id": "tiny", "max_model_len": MAX_LEN}]})
        body = json.loads(request.read())
        if path == "/tokenize":
            ids = tok(body["prompt"], add_special_tokens=body["add_special_tokens"])["input_ids"]
            return httpx.Response(200, json={"tokens": ids, "count": len(ids)})
        assert path == "/v1/completions"
        assert body["prompt_logprobs"] == 0
        choices = [
            {"index": k, "prompt_logprobs": prompt_logprobs(ids)}
            for k, ids in enumerate(body["prompt"])
        ]
        tokens = sum(len(ids) for ids in body["prompt"])
        return httpx.Response(200, json={"choices": choices, "usage": {"prompt_tokens": tokens}})

    return httpx.MockTransport(handler)


def test_vllm_and_hf_scores_agree_on_the_same_model(model: Path) -> None:
    backend = HFCausalBackend(model, num_threads=1, dtype="float32")
    sums, counts, _ = backend.score(TEXTS)
    cfg = json.loads((model / "config.json").read_text())
    svc = VLLMService(
        "http://vllm.test",
        transport=_transport(model),
        env_file=None,
        config=cfg,
        embedding_std=0.02,
    )
    got = svc.score(TEXTS)
    assert got.token_counts.tolist() == counts
    np.testing.assert_allclose(got.logprobs, sums, rtol=1e-5, atol=1e-4)
