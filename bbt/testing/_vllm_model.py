"""The model behind :class:`bbt.testing.vllm_fake.VLLMFake`: the causal mock, its files and
how a sequence of embeddings is read back into soft prompt and text (see that module)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbt.server.mock import MOCK_MODEL_ID, MockBackend

#: The vLLM release whose API the fake follows.
FAKE_VLLM_VERSION = "0.26.0"
FAKE_MODEL_ID = f"{MOCK_MODEL_ID}-causal"
_BOS = "[CLS]"
_SPECIAL = frozenset({"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"})
_PLACEHOLDER = "<prompt_embeds>"
_SPECIAL_RE = re.compile(r"(\[[A-Z]+\]|<prompt_embeds>)")
_MATCH_RTOL = 1e-2  # a row "is" a vocabulary embedding within float16/bfloat16 rounding


class FakeError(Exception):
    """An error answer: status, vLLM's error type name and message, offending parameter."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param

    @property
    def type_name(self) -> str:
        return {400: "BadRequestError", 404: "NotFoundError", 401: "Unauthorized"}.get(
            self.status, "InternalServerError" if self.status >= 500 else "Error"
        )


@dataclass
class FakeCounters:
    """What the fake served (thread-safe increments through :meth:`FakeModel._count`)."""

    requests: int = 0
    chat: int = 0
    completions: int = 0
    sequences: int = 0
    tokenize: int = 0


class FakeModel:
    """The fake's state and model; :class:`~bbt.testing.vllm_fake.VLLMFake` serves it."""

    def __init__(
        self,
        *,
        hidden_size: int = 64,
        seed: int = 0,
        model_id: str = FAKE_MODEL_ID,
        version: str | None = FAKE_VLLM_VERSION,
        enable_prompt_embeds: bool = True,
        logprob_token_ids: bool = True,
        chat_template: str | None = "bbt",
        trust_request_chat_template: bool = False,
        max_model_len: int = 512,
        max_logprobs: int = 20,
        api_key: str | None = None,
        faults: list[tuple[int, float | None]] | None = None,
        keep_requests: int = 1000,
        sentencepiece: bool = False,
    ) -> None:
        self.backend = MockBackend(hidden_size=hidden_size, seed=seed)
        self.vocab = self.backend.vocab
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.table = self.backend.embed(np.arange(len(self.vocab)))
        self._table64 = self.table.astype(np.float64)
        self._sqnorms = (self._table64 * self._table64).sum(axis=1)
        self._norms = np.sqrt(self._sqnorms)
        self.hidden_size = hidden_size
        self.model_id = model_id
        self.version = version
        self.enable_prompt_embeds = enable_prompt_embeds
        self.logprob_token_ids = logprob_token_ids
        if chat_template == "bbt":
            from bbt.vllm import chat_template as bbt_template

            chat_template = bbt_template()
        self.chat_template = chat_template
        self.trust_request_chat_template = trust_request_chat_template
        self.max_model_len = max_model_len
        self.max_logprobs = max_logprobs
        self.api_key = api_key
        self.faults = list(faults or [])
        #: Tokenize as a SentencePiece tokenizer without a word boundary after special
        #: tokens: a text segment right after one, not starting with a space, loses its
        #: first word's boundary piece (played by [UNK], which this vocabulary lacks).
        self.sentencepiece = sentencepiece
        #: The id vLLM gives its registered ``<prompt_embeds>`` special token.
        self.placeholder_id = len(self.vocab)
        self.counters = FakeCounters()
        #: The last ``keep_requests`` POST bodies (path and JSON), oldest first, for tests.
        self.requests_seen: deque[dict[str, Any]] = deque(maxlen=keep_requests)
        self._lock = threading.Lock()
        self.created = int(time.time())

    # ---------------------------------------------------------------- model files

    def config(self) -> dict[str, Any]:
        """A Hugging Face style ``config.json`` for the fake's model."""
        return {
            "architectures": ["BBTFakeForCausalLM"],
            "model_type": "bbt-fake",
            "hidden_size": self.hidden_size,
            "vocab_size": len(self.vocab),
            "num_hidden_layers": 1,
            "initializer_range": float(self.table.std()),
            "max_position_embeddings": self.max_model_len,
        }

    def write_model_files(self, directory: str | Path) -> tuple[Path, Path]:
        """Write ``config.json`` and ``embeddings.npy`` (the input-embedding table) into
        ``directory``: what a user extracts from a real checkpoint. Returns both paths."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cfg = d / "config.json"
        cfg.write_text(json.dumps(self.config(), indent=2), encoding="utf-8")
        emb = d / "embeddings.npy"
        np.save(emb, self.table)
        return cfg, emb

    # ---------------------------------------------------------------- the model

    def tokenize_ids(self, text: str, add_special_tokens: bool) -> list[int]:
        """The ids of ``text`` as a Hugging Face tokenizer gives them: special tokens written
        in the text (``[CLS]``..., and vLLM's ``<prompt_embeds>`` when prompt embeddings are
        enabled) are split off first and kept whole; BOS first with ``add_special_tokens``."""
        ids = [self.index[_BOS]] if add_special_tokens else []
        after_special = False
        for piece in _SPECIAL_RE.split(text):
            if not piece:
                continue
            if piece in _SPECIAL or (piece == _PLACEHOLDER and self.enable_prompt_embeds):
                ids.append(self.placeholder_id if piece == _PLACEHOLDER else self.index[piece])
                after_special = True
                continue
            words, _ = self.backend.tokenize([piece], add_special_tokens=False)
            tids = list(words[0])
            if self.sentencepiece and after_special and tids and not piece[0].isspace():
                tids[0] = self.index["[UNK]"]
            ids.extend(tids)
            after_special = False
        return ids

    def token_str(self, tid: int) -> str:
        return _PLACEHOLDER if tid == self.placeholder_id else self.vocab[tid]

    def next_logprobs(
        self, soft: np.ndarray[Any, Any], text_ids: list[int], bos: bool = True
    ) -> np.ndarray[Any, Any]:
        """Log-probs over the vocabulary of the token after ``[BOS]? soft text``: the fake's
        model reads the rows before the text (BOS's included) as the soft prompt."""
        if bos:
            soft = np.concatenate([self.table[[self.index[_BOS]]], soft], axis=0)
        return self.batch_logprobs([(soft, text_ids)])[0]

    def batch_logprobs(
        self, sequences: list[tuple[np.ndarray[Any, Any], list[int]]]
    ) -> list[np.ndarray[Any, Any]]:
        """:meth:`next_logprobs` of several sequences; those sharing a soft prompt are scored
        in one mock call (each (prompt, text) result is independent of the batching)."""
        groups: dict[bytes, list[int]] = {}
        for k, (soft, _) in enumerate(sequences):
            arr = np.ascontiguousarray(soft, dtype=np.float32)
            groups.setdefault(arr.tobytes() + str(arr.shape).encode(), []).append(k)
        out: list[np.ndarray[Any, Any]] = [np.empty(0)] * len(sequences)
        every = np.arange(len(self.vocab))
        for members in groups.values():
            soft = np.asarray(sequences[members[0]][0], dtype=np.float32)
            texts = []
            for k in members:
                words = [self.vocab[i] for i in sequences[k][1] if self.vocab[i] not in _SPECIAL]
                texts.append(" ".join(words) if words else ".")
            logits, _ = self.backend.logits(soft[None], texts, every)
            rows = logits[0].astype(np.float64)
            rows -= rows.max(axis=1, keepdims=True)
            lps = rows - np.log(np.exp(rows).sum(axis=1, keepdims=True))
            for k, lp in zip(members, lps, strict=True):
                out[k] = lp
        return out

    def prompt_logprobs(self, ids: list[int], k: int) -> list[dict[str, Any] | None]:
        """vLLM's ``prompt_logprobs`` of a token prompt: ``None`` first, then per position t
        the log-prob of ``ids[t]`` after ``ids[:t]`` (what a one-token completion of
        ``ids[:t]`` says of it) and of the top ``k`` (-1: all) others, with vocab ranks."""
        soft = np.zeros((0, self.hidden_size), np.float32)
        scored = self.batch_logprobs([(soft, ids[:t]) for t in range(1, len(ids))])
        out: list[dict[str, Any] | None] = [None]
        for tok, lp in zip(ids[1:], scored, strict=True):
            top = np.argsort(-lp, kind="stable")[: len(lp) if k == -1 else k]
            chosen = [tok] + [int(t) for t in top if int(t) != tok]
            out.append(
                {
                    str(t): {
                        "logprob": float(lp[t]),
                        "rank": int((lp > lp[t]).sum()) + 1,
                        "decoded_token": self.token_str(t),
                    }
                    for t in chosen
                }
            )
        return out

    def split_sequence(self, rows: np.ndarray[Any, Any]) -> tuple[np.ndarray[Any, Any], list[int]]:
        """(soft rows, text ids) of a whole embedded sequence (see the module docstring)."""
        r = rows.astype(np.float64)
        # Squared distances to every table row by one product: [L, V].
        # einsum, not matmul: a multi-threaded BLAS on a busy machine is slower at this size.
        cross = np.einsum("lh,vh->lv", r, self._table64)
        sq = (r * r).sum(axis=1)[:, None] + self._sqnorms[None, :] - 2.0 * cross
        nearest = sq.argmin(axis=1)
        dist = np.sqrt(np.maximum(sq[np.arange(len(rows)), nearest], 0.0))
        is_token = dist <= _MATCH_RTOL * self._norms[nearest]
        end = len(rows)
        while end > 0 and is_token[end - 1]:
            end -= 1
        return rows[:end], [int(i) for i in nearest[end:]]

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for k, v in deltas.items():
                setattr(self.counters, k, getattr(self.counters, k) + v)

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != self.model_id:
            raise FakeError(404, f"The model `{model}` does not exist.", "model")


def is_ids(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(i, int) and not isinstance(i, bool) for i in value
    )


def prompt_logprobs_field(body: dict[str, Any], max_logprobs: int) -> int | None:
    """``prompt_logprobs`` after vLLM's checks (SamplingParams and the engine's limit)."""
    k = body.get("prompt_logprobs")
    if k is None:
        return None
    if not isinstance(k, int) or (k < 0 and k != -1):
        raise FakeError(
            400, f"prompt_logprobs must be non-negative or -1, got {k}.", "prompt_logprobs"
        )
    if k > max_logprobs:
        raise FakeError(
            400,
            f"Requested prompt logprobs of {k}, which is greater than max allowed: {max_logprobs}",
            "prompt_logprobs",
        )
    return k
