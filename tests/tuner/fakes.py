"""A tiny Service for tokenizer and chunking edge cases."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from bbt.client import UsageStats
from bbt.protocol import Limits, ModelInfo, TokenizeResponse


class WordService:
    """A tiny Service with a whitespace tokenizer whose vocabulary treats some words as
    several tokens, and whose logits are a fixed linear function of the prompt."""

    def __init__(self, multi: Sequence[str] = ("Sci/Tech", "unbelievable"), h: int = 8) -> None:
        self.multi = set(multi)
        self.vocab: dict[str, int] = {}
        self.h = h
        self._usage = UsageStats()
        self.info = ModelInfo(
            id="word",
            hidden_size=h,
            vocab_size=5000,
            num_layers=1,
            max_sequence_length=128,
            mask_token="<mask>",
            mask_token_id=0,
            embedding_mean=0.0,
            embedding_std=0.5,
            dtypes=["float32"],
            limits=Limits(
                max_prompts_per_request=4,
                max_texts_per_request=16,
                max_sequences_per_request=64,
                max_prompt_tokens=16,
                max_candidates=8,
                max_text_chars=200,
                max_embedding_ids=3,
                max_body_bytes=1 << 20,
            ),
        )

    @property
    def usage(self) -> UsageStats:
        return self._usage

    def model_info(self) -> ModelInfo:
        return self.info

    def _id(self, tok: str) -> int:
        return self.vocab.setdefault(tok, 10 + len(self.vocab))

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        ids, toks = [], []
        for text in texts:
            t: list[str] = []
            for w in text.split():
                t.extend([w[: len(w) // 2], w[len(w) // 2 :]] if w in self.multi else [w])
            toks.append(t)
            ids.append([self._id(x) for x in t])
        return TokenizeResponse(model="word", ids=ids, tokens=toks)

    def embed(self, token_ids: Sequence[int]) -> np.ndarray[Any, np.dtype[np.float32]]:
        if len(token_ids) > self.info.limits.max_embedding_ids:
            raise AssertionError("embed called above the limit")
        return np.stack([np.full(self.h, float(i), dtype=np.float32) for i in token_ids])

    def logits(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> np.ndarray[Any, np.dtype[np.float32]]:
        p = np.asarray(prompts, dtype=np.float32)
        self._usage.calls += p.shape[0]
        s = p.sum(axis=(1, 2))  # [P]
        out = np.zeros((p.shape[0], len(texts), len(candidate_ids)), dtype=np.float32)
        out[:, :, 0] = s[:, None]
        return out
