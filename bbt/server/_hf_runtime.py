"""The machinery every Hugging Face backend shares: compute choice, batching, tokenising.

:class:`HFRuntime` runs a population of soft prompts over texts the same way for a masked
and a causal LM (tokenise once with the cache, sort by length, chunks of at most
``token_budget`` padded tokens, the FIFO model lock, the stop check before each chunk);
a subclass loads its model and says how one text is encoded (:meth:`HFRuntime._encode`)
and how one chunk runs forward (:meth:`HFRuntime._forward_chunk`).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol import (
    DEEP_PROMPTS,
    Limits,
    ModelInfo,
    ProtocolViolation,
    Usage,
)
from bbt.protocol.backend import Backend, FloatArray, IntArray
from bbt.protocol.features import Pooling
from bbt.server._cancel import StopCheck, current_stop_check, raise_if_stopped
from bbt.server._tokcache import (
    TokenCache,
)

if TYPE_CHECKING:
    import torch

from bbt.server._hf_common import (
    DEFAULT_TOKEN_BUDGET,
    DEVICE_CHOICES,
    DTYPE_CHOICES,
    ComputeDType,
    Device,
    DeviceSpec,
    DTypeSpec,
    ForwardChunk,
    _Encoded,
    _FifoLock,
    _positive_int,
    _resolve_compute,
)


class HFRuntime(Backend):
    """The shared part of :class:`~bbt.server.hf.HFBackend` and its causal twin."""

    # Set by the subclass while it loads its model (see HFBackend.__init__).
    _torch: Any
    _tok: Any
    _model: Any
    _encoder: Any
    _word_emb: Any
    _dtype: Any
    _info: ModelInfo
    _limits: Limits
    _hidden: int
    _vocab: int
    _max_len: int
    _prefix: tuple[int, ...]
    _suffix: tuple[int, ...]
    _insert_at: int
    _pad_id: int
    _mask_id: int
    _token_budget: int
    _lock: _FifoLock
    _tok_lock: threading.Lock
    _cache: TokenCache
    _deep_chunk: Any = None
    model_path: Path
    head_name: str

    def _init_compute(
        self,
        torch: Any,
        dtype: DTypeSpec,
        device: DeviceSpec,
        num_threads: int | str | None,
        token_budget: int | None,
        tokenizer_cache_size: int,
        tokenizer_cache_bytes: int,
    ) -> None:
        """Check the compute arguments and choose dtype, device and token budget.

        Shared with :class:`bbt.server.hf_causal.HFCausalBackend`, which takes the same ones.
        """
        self._torch = torch
        if token_budget is not None and token_budget < 1:
            raise ConfigurationError(f"token_budget must be positive, got {token_budget}")
        if tokenizer_cache_size < 0 or tokenizer_cache_bytes < 0:
            raise ConfigurationError(
                "tokenizer_cache_size and tokenizer_cache_bytes must be non-negative, got "
                f"{tokenizer_cache_size} and {tokenizer_cache_bytes}"
            )
        threads = _positive_int(num_threads, "num_threads")
        if threads is not None:
            torch.set_num_threads(threads)
        if device not in DEVICE_CHOICES:
            raise ConfigurationError(
                f"device must be one of {', '.join(DEVICE_CHOICES)}, got {device!r}"
            )
        if dtype not in DTYPE_CHOICES:
            raise ConfigurationError(
                f"dtype must be one of {', '.join(DTYPE_CHOICES)}, got {dtype!r}"
            )
        resolved = _resolve_compute(torch, dtype, device)
        if resolved.device == "cuda" and not torch.cuda.is_available():
            raise ConfigurationError("device 'cuda' requested but torch sees no CUDA device")
        if resolved.dtype == "float16" and resolved.device != "cuda":
            raise ConfigurationError("float16 needs device 'cuda'; on CPU use bfloat16")
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        self.compute_dtype: ComputeDType = cast("ComputeDType", resolved.dtype)
        self.device: Device = cast("Device", resolved.device)
        #: One line: what compute setup was chosen and why (printed by ``bbt serve``).
        self.compute_reason: str = resolved.reason
        self._dtype = dtypes[resolved.dtype]
        self._token_budget = (
            token_budget if token_budget is not None else DEFAULT_TOKEN_BUDGET[resolved.device]
        )

    def _special_layout(self, source: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """The special token ids the tokenizer puts before and after a text."""
        probe = self._tok("a", add_special_tokens=False)["input_ids"]
        full = self._tok("a", add_special_tokens=True)["input_ids"]
        k = next(
            (i for i in range(len(full) - len(probe) + 1) if full[i : i + len(probe)] == probe),
            None,
        )
        if k is None:
            raise ConfigurationError(f"cannot locate the text inside {source!r}'s special tokens")
        return tuple(full[:k]), tuple(full[k + len(probe) :])

    def _max_sequence_length(self, config: Any) -> int:
        limits = []
        mpe = getattr(config, "max_position_embeddings", None)
        if isinstance(mpe, int) and mpe > 0:
            # RoBERTa-style models number positions from padding_idx + 1.
            offset = 0
            if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
                offset = int(getattr(config, "pad_token_id", 1) or 1) + 1
            limits.append(mpe - offset)
        tml = getattr(self._tok, "model_max_length", None)
        if isinstance(tml, int) and 0 < tml < 1_000_000:
            limits.append(tml)
        return min(limits) if limits else 512

    # ------------------------------------------------------------------ Backend API

    @property
    def info(self) -> ModelInfo:
        return self._info

    @property
    def token_budget(self) -> int:
        """Most padded tokens in one forward pass (at least one sequence runs per pass)."""
        return self._token_budget

    @token_budget.setter
    def token_budget(self, value: int) -> None:
        if value < 1:
            raise ConfigurationError(f"token_budget must be positive, got {value}")
        self._token_budget = value

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        with self._tok_lock:  # a Rust tokenizer refuses concurrent use ("Already borrowed")
            enc = self._tok(list(texts), add_special_tokens=add_special_tokens)["input_ids"]
            ids = [[int(i) for i in row] for row in enc]
            toks = [list(self._tok.convert_ids_to_tokens(row)) for row in ids]
        return ids, toks

    def embed(self, token_ids: IntArray) -> FloatArray:
        torch = self._torch
        ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64), device=self._word_emb.device)
        with torch.inference_mode():
            out = self._word_emb[ids].float().cpu().numpy()
        return np.ascontiguousarray(out, dtype=np.float32)

    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        cand = np.ascontiguousarray(candidate_ids, dtype=np.int64)
        if cand.ndim != 1 or cand.size == 0 or cand.min() < 0 or cand.max() >= self._vocab:
            raise ProtocolViolation("candidate ids out of range", field="candidate_ids")
        return self._run(prompts, texts, cand)

    def features(
        self, prompts: FloatArray, texts: list[str], pooling: Pooling
    ) -> tuple[FloatArray, Usage]:
        """The last hidden state [P, B, H], mean-pooled or at the scored position (1.3)."""
        return self._run(prompts, texts, None, pooling=pooling)

    def mask_hidden_states(self, prompts: FloatArray, texts: list[str]) -> FloatArray:
        """The encoder's last hidden state at each mask position: shape [P, B, H], float32.

        Not part of the protocol: for probes and diagnostics (``benchmarks/``).
        """
        out, _ = self._run(prompts, texts, None)
        return out

    def _run(
        self,
        prompts: FloatArray,
        texts: list[str],
        cand: IntArray | None,
        should_stop: StopCheck | None = None,
        pooling: Pooling = "mask",
    ) -> tuple[FloatArray, Usage]:
        """Score all pairs in chunks (``cand`` None: hidden states, pooled by ``pooling``);
        ``should_stop`` (default: the app's check for this
        request, see :mod:`bbt.server._cancel`) is polled before each forward chunk, and
        :class:`~bbt.server._cancel.Cancelled` is raised once it says the client has gone.
        """
        torch = self._torch
        stop = should_stop if should_stop is not None else current_stop_check()
        prompts = np.ascontiguousarray(prompts, dtype=np.float32)
        deep = prompts.ndim == 4
        if deep and DEEP_PROMPTS not in self._info.capabilities:
            raise ProtocolViolation(
                "this model's layers cannot be hooked: no deep prompts", field="prompts.shape"
            )
        if prompts.ndim not in (3, 4) or prompts.shape[-1] != self._hidden:
            raise ProtocolViolation(
                f"prompts must have shape [P, n, {self._hidden}]", field="prompts.shape"
            )
        if deep and prompts.shape[1] != self._info.num_layers:
            raise ProtocolViolation(
                f"a deep prompt needs {self._info.num_layers} layer slices", field="prompts.shape"
            )
        n_prompts, n_tokens = int(prompts.shape[0]), int(prompts.shape[-2])
        encoded = [self._encode(text, n_tokens, j) for j, text in enumerate(texts)]
        n_texts = len(texts)
        width = self._hidden if cand is None else int(cand.size)
        out = np.empty((n_prompts, n_texts, width), dtype=np.float32)
        if n_prompts == 0 or n_texts == 0:
            return out, Usage(prompts=n_prompts, sequences=0, tokens=0)

        # Text-major order, longest texts first: each chunk pads to its first sequence.
        order = sorted(range(n_texts), key=lambda j: -len(encoded[j].ids))
        pairs = [(i, j) for j in order for i in range(n_prompts)]
        tokens = sum((len(e.ids) + n_tokens) * n_prompts for e in encoded)
        dev = self._word_emb.device
        with torch.inference_mode():
            prompts_t = torch.from_numpy(prompts).to(device=dev, dtype=self._dtype)
            cand_t = None if cand is None else torch.from_numpy(cand).to(dev)
            text_embs = {
                j: self._word_emb[torch.tensor(encoded[j].ids, device=dev)] for j in range(n_texts)
            }
            start = 0
            while start < len(pairs):
                # Cheap (an Event read): a client that gave up frees the model within a chunk.
                raise_if_stopped(stop, "logits")
                longest = len(encoded[pairs[start][1]].ids) + n_tokens
                size = max(1, self._token_budget // longest)
                chunk = pairs[start : start + size]
                start += len(chunk)
                with self._lock.hold():
                    try:
                        job = ForwardChunk(
                            chunk, encoded, text_embs, prompts_t, n_tokens, longest, cand_t,
                            pooling,
                        )  # fmt: skip
                        res = self._forward_chunk(job)
                    finally:
                        self._deep_chunk = None  # set by a deep chunk for the layer hooks
                res_np = res.float().cpu().numpy()
                pi = np.fromiter((p for p, _ in chunk), dtype=np.int64, count=len(chunk))
                tj = np.fromiter((t for _, t in chunk), dtype=np.int64, count=len(chunk))
                out[pi, tj] = res_np
        return out, Usage(prompts=n_prompts, sequences=n_prompts * n_texts, tokens=tokens)

    def close(self) -> None:
        self._cache.clear()

    @staticmethod
    def _mean_pool(hidden: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Hidden states [S, T, H] averaged over the positions ``keep`` [S, T] marks (each
        sequence's own tokens: no padding, no soft prompt), in float32."""
        weight = keep.float().unsqueeze(-1)
        return (hidden.float() * weight).sum(dim=1) / weight.sum(dim=1).clamp(min=1)

    @property
    def tokenizer_cache(self) -> TokenCache:
        """The cache of token ids per text (its ``nbytes``, ``hits``, ``misses``...)."""
        return self._cache

    # ------------------------------------------------------------------ internals

    def _body_ids(self, text: str) -> tuple[int, ...]:
        hit = self._cache.get(text)
        if hit is not None:
            return hit
        with self._tok_lock:
            ids = tuple(int(i) for i in self._tok(text, add_special_tokens=False)["input_ids"])
        self._cache.put(text, ids)
        return ids

    def encode(self, text: str, n_prompt_tokens: int = 0, index: int = 0) -> _Encoded:
        """Tokenise ``text`` as :meth:`logits` does (special tokens, truncation); ``index``
        is its place in a request, for error messages."""
        return self._encode(text, n_prompt_tokens, index)

    # ------------------------------------------------------------------ white-box hooks
    # What bbt.whitebox trains around: the served model and its own forward pass, so that a
    # prompt trained with gradients scores as it does through the server.

    @property
    def word_embeddings(self) -> Any:
        """The model's input embedding table [V, H] (its own tensor)."""
        return self._word_emb

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def freeze(self) -> None:
        """Stop gradients from reaching the model's (and a built head's) weights."""
        self._model.requires_grad_(False)
        built = getattr(self, "_built_head", None)
        if built is not None:
            built.requires_grad_(False)

    def trunk(self) -> Any:
        """The module a fine-tuning wrapper (peft) wraps: a causal LM whole (logits out), a
        masked LM's encoder (hidden states out; :meth:`head_logits` reads them)."""
        return self._model if self._info.kind == "causal_lm" else self._encoder

    def forward(self, job: ForwardChunk) -> torch.Tensor:
        """The forward pass :meth:`logits` runs over one chunk, with autograd when called
        outside ``torch.inference_mode`` (gradients reach a prompt that requires them)."""
        return self._forward_chunk(job)

    def _encode(self, text: str, n_tokens: int, index: int) -> _Encoded:
        """``text`` as the model sees it with an ``n_tokens`` prompt (``index``: its place
        in the request, for error messages)."""
        raise NotImplementedError

    def _forward_chunk(self, job: ForwardChunk) -> torch.Tensor:
        """One forward pass over a chunk of (prompt, text) pairs: candidate logits (or
        hidden states when ``job.cand_t`` is None) at each sequence's scored position."""
        raise NotImplementedError
