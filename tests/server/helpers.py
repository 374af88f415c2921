"""Request builders shared by the server tests."""

from __future__ import annotations

from typing import Any

import numpy as np

from bbt.protocol import ErrorEnvelope, ModelInfo, Tensor


def prompts(p: int, n: int, h: int, seed: int = 0, scale: float = 0.05) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((p, n, h)) * scale).astype(np.float32)


def texts(info: ModelInfo, b: int) -> list[str]:
    words = ["the", "movie", "was", "long", "and", "we", "saw", "it"]
    return [f"{' '.join(words[: 1 + i % len(words)])} It was {info.mask_token} ." for i in range(b)]


def logits_body(
    info: ModelInfo,
    prompt: np.ndarray[Any, Any] | None = None,
    b: int = 2,
    candidate_ids: list[int] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    if prompt is None:
        prompt = prompts(1, 2, info.hidden_size)
    body: dict[str, Any] = {
        "model": info.id,
        "prompts": Tensor.from_numpy(prompt).model_dump(),
        "texts": texts(info, b),
        "candidate_ids": candidate_ids if candidate_ids is not None else [0, 1],
    }
    body.update(overrides)
    return body


def assert_envelope(response: Any, status: int | None = None) -> ErrorEnvelope:
    """The response is an error envelope (with the protocol headers); return it parsed."""
    if status is not None:
        assert response.status_code == status, response.text
    assert 400 <= response.status_code < 600
    assert response.headers["x-bbt-protocol"] == "1"
    assert response.headers["x-request-id"]
    return ErrorEnvelope.model_validate_json(response.content)
