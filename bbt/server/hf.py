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
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol import (
    DEEP_PROMPTS,
    FEATURES_CAPABILITY,
    SUPPORTED_DTYPES,
    Limits,
    ModelInfo,
    ProtocolViolation,
)
from bbt.server._deep_hooks import ENCODER_LAYER_PATHS, find_layers, install_deep_hooks
from bbt.server._hf_common import (
    _CALIBRATION_TEXTS,
    DEFAULT_MODEL_ID,
    DEFAULT_TOKEN_BUDGET,
    DEVICE_CHOICES,
    DTYPE_CHOICES,
    PROBE_KEY,
    PROBE_ROWS,
    SERVE_EXTRA_HINT,
    SHIPPED_HEAD,
    ComputeDType,
    Device,
    DeviceSpec,
    DTypeSpec,
    ForwardChunk,
    HeadSpec,
    _build_head_module,
    _Encoded,
    _FifoLock,
    _require_torch,
    clipped_std,
    default_limits,
    default_model_path,
    embedding_probe,
    load_head_file,
    probe_matches,
)
from bbt.server._hf_runtime import HFRuntime
from bbt.server._tokcache import (
    DEFAULT_TOKENIZER_CACHE_BYTES,
    DEFAULT_TOKENIZER_CACHE_ENTRIES,
    ENTRY_OVERHEAD_BYTES,
    TokenCache,
)

if TYPE_CHECKING:
    import torch


class HFBackend(HFRuntime):
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
        # One construction for every HF backend; what differs between a masked and a causal
        # LM is in the hooks below (_locate, _load, _attach_head, _layout, _model_id,
        # _kind, _add_deep_prompts), which HFCausalBackend overrides.
        torch, transformers = _require_torch()
        self._init_compute(
            torch, dtype, device, num_threads, token_budget, tokenizer_cache_size,
            tokenizer_cache_bytes,
        )  # fmt: skip
        path, source = self._locate(model_path)
        self.model_path = path

        transformers.utils.logging.disable_progress_bar()
        config, model = self._load(transformers, source, head)
        model.eval()
        model.to(self.device)
        self._model = model
        self._word_emb = model.get_input_embeddings().weight  # [V, H]
        emb32 = self._word_emb.detach().float()
        self._emb_mean = float(emb32.mean().item())
        self._emb_std = float(emb32.std().item())
        vocab, hidden = (int(s) for s in self._word_emb.shape)
        self._vocab = vocab
        self._hidden = hidden
        self._mlm_head: Any = None  # the model's own head module, applied to [S, H]
        self._built_head: Any = None
        self.head_name = self._attach_head(config, head)

        # Sequence geometry.
        self._max_len = self._max_sequence_length(config)
        self._layout(source, config)
        self._limits = limits or default_limits(self._max_len)
        if self._limits.max_prompt_tokens + len(self._prefix) + len(self._suffix) + 1 > (
            self._max_len
        ):
            raise ConfigurationError(
                f"max_prompt_tokens={self._limits.max_prompt_tokens} leaves no room for text "
                f"in {self._max_len} tokens"
            )
        self._info = self._describe(config, model_id, model_path)
        self._lock = _FifoLock()
        self._tok_lock = threading.Lock()
        self._cache = TokenCache(max_bytes=tokenizer_cache_bytes, max_entries=tokenizer_cache_size)
        self._add_deep_prompts()

    # ------------------------------------------------------------------ construction hooks

    def _locate(self, model_path: str | Path | None) -> tuple[Path, str]:
        """(the model directory, what to load it from: the directory or a hub name)."""
        self._is_default = model_path is None
        path = default_model_path() if model_path is None else Path(model_path).expanduser()
        source = str(path) if path.exists() or self._is_default else str(model_path)
        if not path.exists() and (self._is_default or Path(str(model_path)).is_absolute()):
            raise ConfigurationError(f"model directory {path} does not exist")
        return path, source

    def _load(self, transformers: Any, source: str, head: HeadSpec) -> tuple[Any, Any]:
        """Load config, tokenizer (``self._tok``) and model; set ``self._encoder``."""
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
        self._use_model_head = head == "model" or (head == "auto" and has_mlm_head)
        try:
            if self._use_model_head:
                model = transformers.AutoModelForMaskedLM.from_pretrained(source, dtype=self._dtype)
            else:
                model = transformers.AutoModel.from_pretrained(source, dtype=self._dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"cannot load a model from {source!r}: {exc}") from None
        self._encoder = model.base_model if self._use_model_head else model
        return config, model

    def _attach_head(self, config: Any, head: HeadSpec) -> str:
        """Set up the scoring head; answer its name (:attr:`head_name`)."""
        if self._use_model_head:
            self._mlm_head = self._find_model_head(self._model)
            return "model"
        eps = float(getattr(config, "layer_norm_eps", 1e-12))
        self._built_head, name = self._make_built_head(head, eps)
        self._built_head.to(self.device)
        self._built_head.eval()
        return name

    def _layout(self, source: str, config: Any) -> None:
        """Where the prompt goes among the special tokens; pad, mask and token-type use."""
        self._prefix, self._suffix = self._special_layout(source)
        # The prompt goes right after the first special token ([CLS] / <s>); none: at 0.
        self._insert_at = 1 if self._prefix else 0
        pad_id = self._tok.pad_token_id
        self._pad_id = int(pad_id) if pad_id is not None else 0
        self._mask_id = int(self._tok.mask_token_id)
        self._uses_token_types = getattr(config, "type_vocab_size", 0) > 0 and (
            "token_type_ids" in self._encoder.forward.__code__.co_varnames
        )

    def _model_id(self, model_id: str | None, model_path: str | Path | None) -> str:
        """The id to advertise: ``model_id``, else the model's name (and a built head's)."""
        if model_id is not None:
            return model_id
        path = self.model_path
        base = DEFAULT_MODEL_ID if self._is_default else path.name or str(model_path)
        if self.head_name in ("model", "shipped"):
            return base
        return f"{base}+{head_label(self.head_name)}"

    def _kind(self) -> dict[str, Any]:
        """The :class:`ModelInfo` fields that say what kind of LM this is: a masked LM's
        mask token."""
        return {"mask_token": str(self._tok.mask_token), "mask_token_id": self._mask_id}

    def _describe(
        self, config: Any, model_id: str | None, model_path: str | Path | None
    ) -> ModelInfo:
        return ModelInfo(
            id=self._model_id(model_id, model_path),
            **self._kind(),
            hidden_size=self._hidden,
            vocab_size=self._vocab,
            num_layers=int(getattr(config, "num_hidden_layers", 1) or 1),
            max_sequence_length=self._max_len,
            embedding_mean=self._emb_mean,
            embedding_std=self._emb_std,
            dtypes=list(SUPPORTED_DTYPES),
            limits=self._limits,
            capabilities=[FEATURES_CAPABILITY],
        )

    #: Where the base model keeps the layers that deep prompts hook (see _deep_hooks).
    _LAYER_PATHS: tuple[tuple[str, ...], ...] = ENCODER_LAYER_PATHS

    def _add_deep_prompts(self) -> None:
        # Deep prompts (BBTv2): a pre-hook on each layer l >= 1 adds slice l of the chunk's
        # deep prompts to the hidden states entering it at the prompt positions.
        self._deep_chunk = None  # [S, L, n, H] while a deep chunk runs, else None
        self._deep_at: Any = (0, 0)  # where that chunk's prompts sit (see _deep_hooks)
        th = self._torch
        layers = find_layers(self._encoder, self._LAYER_PATHS, self._info.num_layers, th.nn)
        if layers is not None:
            install_deep_hooks(self, layers, th)
            layer_std = [self._emb_std, *self._hidden_std(len(layers))]
            capabilities = [*self._info.capabilities, DEEP_PROMPTS]
            self._info = self._info.model_copy(
                update={"capabilities": capabilities, "layer_std": layer_std}
            )

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

    def head_logits(self, hidden: Any, cand_t: Any) -> Any:
        """Candidate logits [S, C] of mask-position states ``hidden`` [S, H] through the
        served head (a built head, or the model's own MLM head)."""
        if self._built_head is not None:
            return self._built_head(hidden.float(), self._word_emb[cand_t].float(), cand_t)
        return self._mlm_head(hidden)[:, cand_t]

    def _forward_chunk(self, job: ForwardChunk) -> torch.Tensor:
        chunk, encoded, text_embs, prompts_t, n_tokens, longest, cand_t, pooling = job
        th = self._torch
        dev = self._word_emb.device
        n_seq = len(chunk)
        pad_vec = self._word_emb[self._pad_id]
        x = pad_vec.expand(n_seq, longest, self._hidden).clone()
        attn = th.zeros((n_seq, longest), dtype=th.long, device=dev)
        mask_pos = th.empty(n_seq, dtype=th.long, device=dev)
        at = self._insert_at
        for j, seqs in job.by_text().items():
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
        if cand_t is None and pooling == "mean":
            keep = attn.clone()
            keep[:, at : at + n_tokens] = 0  # the text's own tokens, specials included
            result = self._mean_pool(self._encoder(**kwargs).last_hidden_state, keep)
        elif cand_t is None:
            result = self._encoder(**kwargs).last_hidden_state[rows, mask_pos]
        elif self._built_head is not None or self._mlm_head is not None:
            hidden = self._encoder(**kwargs).last_hidden_state[rows, mask_pos]
            result = self.head_logits(hidden, cand_t)
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


# The public names of the backend's helpers: their home is _hf_common, their address here.
__all__ = [
    "DEFAULT_MODEL_ID",
    "DEFAULT_TOKEN_BUDGET",
    "DEVICE_CHOICES",
    "DTYPE_CHOICES",
    "ENTRY_OVERHEAD_BYTES",
    "PROBE_KEY",
    "PROBE_ROWS",
    "SERVE_EXTRA_HINT",
    "SHIPPED_HEAD",
    "ComputeDType",
    "DTypeSpec",
    "Device",
    "DeviceSpec",
    "ForwardChunk",
    "HFBackend",
    "HeadSpec",
    "TokenCache",
    "clipped_std",
    "default_limits",
    "default_model_path",
    "describe",
    "embedding_probe",
    "head_label",
    "load_head_file",
    "probe_matches",
]
