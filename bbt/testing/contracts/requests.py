"""Request builders and answer checks the contract suites share (and tests may reuse).

Framework-free: plain dicts for ``httpx`` (or FastAPI's ``TestClient``) to send as JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bbt.protocol import ErrorEnvelope, ModelInfo, Tensor


def prompts(p: int, n: int, h: int, seed: int = 0, scale: float = 0.05) -> np.ndarray[Any, Any]:
    """``p`` random soft prompts of ``n`` tokens of width ``h`` (float32, seeded)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((p, n, h)) * scale).astype(np.float32)


def texts(info: ModelInfo, b: int) -> list[str]:
    """``b`` distinct texts the model can score: with its mask token for a masked LM,
    ending where the next token is predicted for a causal one."""
    words = ["the", "movie", "was", "long", "and", "we", "saw", "it"]
    end = f" {info.mask_token} ." if info.mask_token is not None else ""
    return [f"{' '.join(words[: 1 + i % len(words)])} It was{end}" for i in range(b)]


def logits_body(
    info: ModelInfo,
    prompt: np.ndarray[Any, Any] | None = None,
    b: int = 2,
    candidate_ids: list[int] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A valid ``POST /v1/logits`` body; ``overrides`` replace its fields."""
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


__all__ = ["assert_envelope", "logits_body", "prompts", "texts"]
