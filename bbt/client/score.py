"""Prompt log-probabilities (protocol 1.6) for the clients: plan, send, assemble.

:class:`bbt.Client`, :class:`bbt.AsyncClient` and :class:`bbt.client.LocalClient` answer
``score(texts)`` through here, so they agree on the split (at most
``max_texts_per_request`` texts and ``max_body_bytes`` per request), the checks and the
usage counted (``calls`` += 1 per score call, like a features call without prompts; the
server's ``tokens`` and ``sequences`` added). A model without the ``"score"`` capability
is refused before anything is sent, with the error the server would answer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bbt.client.planning import _even_bounds, checked, invalid, plan_grid
from bbt.client.transport import UsageStats
from bbt.errors import InvalidRequestError, ProtocolError
from bbt.protocol import SCORE_CAPABILITY, ModelInfo, ScoreRequest, ScoreResponse
from bbt.protocol.score import check_score_answer, check_score_request, no_score

if TYPE_CHECKING:
    from bbt.client._base import BaseClient, Exchange


@dataclass(frozen=True)
class TextScores:
    """What a score call answers, per text: the summed log-probability of its scored
    tokens (natural log) and how many tokens that is."""

    logprobs: np.ndarray[Any, np.dtype[np.float64]]
    token_counts: np.ndarray[Any, np.dtype[np.int64]]

    def perplexity(self) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Per-token perplexity ``exp(-logprob / tokens)`` of each text (1.0 for a text
        with no scored token)."""
        counts = np.maximum(self.token_counts, 1)
        return np.asarray(np.exp(-self.logprobs / counts), dtype=np.float64)


def require_score(info: ModelInfo) -> None:
    """Refuse, before sending, a model that does not list the ``score`` capability."""
    if SCORE_CAPABILITY not in info.capabilities:
        raise invalid(no_score(info.id))


def plan_score(info: ModelInfo, texts: Sequence[str]) -> list[ScoreRequest]:
    """Split and pre-flight check a score call."""
    require_score(info)
    texts = list(texts)
    if not texts:
        raise InvalidRequestError("need at least one text", field="texts")
    text_bytes = max(6 * len(t) + 3 for t in texts)
    _, groups = plan_grid(1, len(texts), info.limits, text_bytes=text_bytes)
    requests = []
    for b0, b1 in _even_bounds(len(texts), groups):
        with checked(b0):
            req = ScoreRequest(model=info.id, texts=texts[b0:b1])
            check_score_request(req, info)
        requests.append(req)
    return requests


def assemble_score(
    requests: Sequence[ScoreRequest], answers: Sequence[ScoreResponse], usage: UsageStats
) -> TextScores:
    """The call's scores from its requests' answers, in order; usage counted."""
    sums: list[float] = []
    counts: list[int] = []
    for req, resp in zip(requests, answers, strict=True):
        try:
            s, c = check_score_answer(resp.logprobs, resp.token_counts, len(req.texts))
        except ValueError as exc:
            raise ProtocolError(f"the server's score answer is malformed: {exc}") from None
        sums += s
        counts += c
        usage.sequences += resp.usage.sequences
        usage.tokens += resp.usage.tokens
    usage.calls += 1
    return TextScores(np.asarray(sums, np.float64), np.asarray(counts, np.int64))


def exchange_score(client: BaseClient[Any], texts: Sequence[str]) -> Exchange[TextScores]:
    """A score call as an exchange (no I/O): what ``Client.score`` and
    ``AsyncClient.score`` run."""
    from bbt.client._base import Batch, Call

    info = yield from client._exchange_model_info()
    requests = plan_score(info, texts)
    path = client._api("/score")
    answers = yield Batch([Call("POST", path, r, ScoreResponse, len(r.texts)) for r in requests])
    return assemble_score(requests, answers, client._usage)


__all__ = ["TextScores", "assemble_score", "exchange_score", "plan_score", "require_score"]
