"""Prompt log-probabilities (protocol 1.6 ``score``) over vLLM's Completions API.

vLLM answers the log-probability of every prompt token given the tokens before it when a
Completions request asks ``prompt_logprobs`` (``0``: the prompt token's own log-prob, no
alternatives). The adapter sends each text as token ids, ``BOS? + text`` exactly as
``/v1/logits`` builds it (the tokenizer's special prefix, then ``/tokenize(text)`` without
special tokens), several texts per request (``prompt`` as a list of id lists, one choice
each), with ``max_tokens: 1`` (vLLM generates at least one token; it is ignored).

Each choice's ``prompt_logprobs`` has one entry per prompt token: ``None`` for the first
(nothing precedes it), then ``{token_id: {"logprob", "rank", "decoded_token"}}`` holding at
least that token. The sum over positions 1.. is the text's score and their number its
token count, as :mod:`bbt.server` answers for a Hugging Face causal LM: with a BOS every
text token is scored; without one the text's first token is not. A text longer than the
window keeps its end, one token shorter than there (room for the generated token). vLLM
writes a log-prob of ``-inf`` as ``-9999.0``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from bbt.client.score import TextScores, require_score
from bbt.client.transport import UsageStats
from bbt.errors import InvalidRequestError, ProtocolError
from bbt.protocol import SCORE_CAPABILITY, ModelInfo
from bbt.protocol.score import check_score_answer

#: vLLM's ``prompt_logprobs`` value asked for: only each prompt token's own log-prob.
PROMPT_LOGPROBS = 0


def score_body(model: str, sequences: list[list[int]]) -> dict[str, Any]:
    """The Completions body that scores ``sequences`` (token ids, BOS included)."""
    return {
        "model": model,
        "prompt": sequences,
        "max_tokens": 1,
        "temperature": 0.0,
        "prompt_logprobs": PROMPT_LOGPROBS,
    }


def _entry_logprob(entry: Any, token: int) -> float:
    if not isinstance(entry, dict):
        raise ProtocolError("a prompt_logprobs entry is not an object")
    got = entry.get(str(token), entry.get(token))
    value = got.get("logprob") if isinstance(got, dict) else got
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ProtocolError(f"prompt_logprobs lacks the prompt token {token}")
    return -9999.0 if value == -math.inf else float(value)  # as vLLM clamps it


def read_score(answer: Any, sequences: list[list[int]]) -> tuple[list[float], list[int], int]:
    """(sums, counts, prompt tokens) of a :func:`score_body` request's answer."""
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or len(choices) != len(sequences):
        raise ProtocolError(f"the score answer does not hold {len(sequences)} choices")
    by_index = sorted(choices, key=lambda c: int(c.get("index", 0)))
    sums, counts = [], []
    for seq, choice in zip(sequences, by_index, strict=True):
        entries = choice.get("prompt_logprobs")
        if not isinstance(entries, list) or len(entries) != len(seq):
            raise ProtocolError(
                "the server returned no prompt_logprobs for every prompt token "
                "(a vLLM that ignores `prompt_logprobs`?)"
            )
        sums.append(sum(_entry_logprob(e, t) for e, t in zip(entries[1:], seq[1:], strict=True)))
        counts.append(len(seq) - 1)
    usage = answer.get("usage") or {}
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return sums, counts, int(tokens) if isinstance(tokens, int) else sum(map(len, sequences))


class VLLMScore:
    """``supports_score``/``score`` of :class:`bbt.vllm.VLLMService` (a mixin)."""

    if TYPE_CHECKING:
        _per_request: int
        _usage: UsageStats
        _usage_lock: threading.Lock

        def model_info(self) -> ModelInfo: ...
        def _special_prefix(self) -> list[int]: ...
        def _ids_of(self, texts: Sequence[str]) -> list[list[int]]: ...
        def _request(self, method: str, path: str, body: Any = None, sequences: int = 0) -> Any: ...
        def _map(self, fn: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]: ...

    def supports_score(self) -> bool:
        """Whether the model answers prompt log-probabilities (any vLLM does)."""
        return SCORE_CAPABILITY in self.model_info().capabilities

    def score(self, texts: Sequence[str]) -> TextScores:
        """Each text's summed token log-probability (natural log) and the tokens it covers,
        from vLLM's ``prompt_logprobs`` (protocol 1.6's ``score``); ``calls`` counts 1."""
        info = self.model_info()
        require_score(info)
        texts = list(texts)
        if not texts:
            raise InvalidRequestError("need at least one text", field="texts")
        prefix = self._special_prefix()
        room = max(info.max_sequence_length - len(prefix) - 1, 1)
        seqs = [prefix + ids[max(len(ids) - room, 0) :] for ids in self._ids_of(texts)]
        # A sequence of one token has nothing scored: vLLM is not asked about it.
        todo = [j for j, s in enumerate(seqs) if len(s) > 1]
        chunks = [todo[k : k + self._per_request] for k in range(0, len(todo), self._per_request)]

        def one(chunk: list[int]) -> tuple[list[float], list[int], int]:
            part = [seqs[j] for j in chunk]
            answer = self._request("POST", "/v1/completions", score_body(info.id, part), len(part))
            return read_score(answer, part)

        sums, counts = [0.0] * len(texts), [0] * len(texts)
        tokens = 0
        for chunk, (s, c, t) in zip(chunks, self._map(one, chunks), strict=True):
            tokens += t
            for j, sj, cj in zip(chunk, s, c, strict=True):
                sums[j], counts[j] = sj, cj
        try:
            sums, counts = check_score_answer(sums, counts, len(texts))
        except ValueError as exc:
            raise ProtocolError(f"the server's prompt log-probs are malformed: {exc}") from None
        with self._usage_lock:
            self._usage.calls += 1
            self._usage.sequences += len(texts)
            self._usage.tokens += tokens
        return TextScores(np.asarray(sums, np.float64), np.asarray(counts, np.int64))
