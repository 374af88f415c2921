"""Prompt log-probabilities (protocol 1.6): how likely a causal LM finds each text.

Endpoint (new in 1.6; a server lists ``"score"`` in ``ModelInfo.capabilities``)::

    POST /v1/score    ScoreRequest -> ScoreResponse

A score call takes B plain texts (no soft prompt, no mask) and answers, for each, the sum
of the model's log-probabilities (natural log) of the text's tokens given the tokens before
them, and how many tokens that sum covers. A model that puts a BOS token before a text
predicts every token of it; one without (GPT-2 style) cannot predict the first, which is
then left out of both the sum and the count. A text longer than the model's window loses
its start, as in ``/v1/logits``. The per-token perplexity of a text is
``exp(-logprob / token_count)``.

Only a causal LM has these probabilities: a masked LM does not list the capability, and a
client falls back to what it can do without (``bbt compare``'s ``manual-ppl`` chooses by
dev accuracy then, and says so).

The models and checks live here, apart from :mod:`bbt.protocol._models`, so the 1.6
additions stay in one module.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field

from bbt.protocol._models import ModelInfo, Usage
from bbt.protocol.validate import (
    ProtocolViolation,
    capability_missing,
    check_batch,
    check_model,
)

#: The capability a server lists in ``ModelInfo.capabilities`` when it answers scores.
SCORE_CAPABILITY = "score"
#: The protocol version that introduced the score operation.
SCORE_SINCE = "1.6"


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScoreRequest(_Wire):
    """The log-probability of each of B texts under the model (1.6)."""

    model: str
    texts: list[str] = Field(min_length=1, description="B plain texts (no mask token).")


class ScoreResponse(_Wire):
    model: str
    logprobs: list[float] = Field(
        description="Per text: the summed natural-log probability of its scored tokens."
    )
    token_counts: list[int] = Field(description="Per text: how many tokens that sum covers.")
    usage: Usage


def check_score_request(req: ScoreRequest, info: ModelInfo) -> list[str]:
    """Validate ``req`` against ``info``; its texts, or ProtocolViolation."""
    check_model(req.model, info)
    check_batch(1, list(req.texts), [], info, "texts")
    return list(req.texts)


def check_score_answer(
    logprobs: list[float], counts: list[int], n_texts: int
) -> tuple[list[float], list[int]]:
    """A backend's (or server's) answer, checked: one finite sum <= 0 and one count >= 0
    per text; ValueError otherwise (a backend bug, or a server that broke the protocol)."""
    if len(logprobs) != n_texts or len(counts) != n_texts:
        raise ValueError(
            f"score answered {len(logprobs)} sums and {len(counts)} counts for {n_texts} texts"
        )
    for s, c in zip(logprobs, counts, strict=True):
        if not math.isfinite(s) or s > 1e-6 or c < 0 or (c == 0 and s != 0.0):
            raise ValueError(f"score answered an impossible sum {s!r} over {c!r} tokens")
    return [float(s) for s in logprobs], [int(c) for c in counts]


def no_score(model_id: str) -> ProtocolViolation:
    """What a server (or a client, before sending) says when the model answers no scores."""
    return capability_missing(
        model_id,
        "returns no prompt log-probabilities",
        SCORE_CAPABILITY,
        SCORE_SINCE,
        "a causal LM backend that offers it",
    )


__all__ = [
    "SCORE_CAPABILITY",
    "SCORE_SINCE",
    "ScoreRequest",
    "ScoreResponse",
    "check_score_answer",
    "check_score_request",
    "no_score",
]
