"""Bytes on the wire for one paper-scale logits request, measured from the real bodies.

Paper scale (Sun et al., 2022, SST-2 16-shot): a population of P=20 soft prompts of n=50
tokens in RoBERTa-large's H=1024, scored on the B=32 training texts with C=2 verbalizer
words. The bodies are built with the protocol's pydantic models and serialised exactly as
``bbt.Client`` sends them (``model_dump_json``), so the figures are what travels (HTTP
headers aside, a few hundred bytes).

    python benchmarks/wire_bytes.py
"""

from __future__ import annotations

import _common
import numpy as np

from bbt.protocol import DType, LogitsRequest, LogitsResponse, Tensor, Usage

P, N, H, B, C = 20, 50, 1024, 32, 2
MASK = "<mask>"


def texts(b: int) -> list[str]:
    # The BBT template for SST-2: "<sentence> . It was <mask> ."
    return [f"{s} . It was {MASK} ." for s in _common.sentences(b)]


def request_bytes(dtype: DType) -> int:
    rng = np.random.default_rng(0)
    prompts = rng.normal(0.0, 0.1, size=(P, N, H)).astype(np.float32)
    req = LogitsRequest(
        model="roberta-large",
        prompts=Tensor.from_numpy(prompts, dtype),
        texts=texts(B),
        candidate_ids=[372, 6587],  # " great", " terrible" in RoBERTa's vocabulary
    )
    return len(req.model_dump_json().encode())


def response_bytes(dtype: DType) -> int:
    logits = np.random.default_rng(1).normal(size=(P, B, C)).astype(np.float32)
    resp = LogitsResponse(
        model="roberta-large",
        logits=Tensor.from_numpy(logits, dtype),
        usage=Usage(prompts=P, sequences=P * B, tokens=P * B * (N + 28)),
    )
    return len(resp.model_dump_json().encode())


def main() -> None:
    raw = P * N * H
    avg_chars = sum(map(len, texts(B))) / B
    print(f"P={P} n={N} H={H} B={B} C={C}; texts average {avg_chars:.0f} characters")
    print("| dtype | raw prompt tensor | request body (up) | response body (down) |")
    print("|---|---:|---:|---:|")
    formats: tuple[tuple[DType, int], ...] = (("float32", 4), ("float16", 2))
    for dtype, itemsize in formats:
        print(
            f"| {dtype} | {raw * itemsize:,} B | {request_bytes(dtype):,} B "
            f"| {response_bytes(dtype):,} B |"
        )


if __name__ == "__main__":
    main()
