"""A :class:`~bbt.server.backend.Backend` for Hugging Face causal LMs (GPT-2, Llama, ...).

A causal LM has no mask token: it is scored at the next token after the text, i.e. with the
outputs at the text's last token (``ModelInfo.kind == "causal_lm"``, docs/protocol.md). Each
sequence is ``[BOS] prompt text``: the n soft-prompt vectors go right after the special
tokens the tokenizer puts before a text (Llama's ``<s>``), or first when there are none
(GPT-2). Special tokens a tokenizer appends (an EOS) are left out: nothing may come between
the text and the token being predicted.

Batching is :class:`~bbt.server.hf.HFBackend`'s, inherited unchanged (tokenise once with the
cache, sort by length, chunks of at most ``token_budget`` padded tokens, the FIFO model lock,
the stop check before each chunk, the same limits and validation). What differs is the
forward pass: sequences are padded on the LEFT, so every sequence's last real token sits in
the last column and ``logits_to_keep=1`` computes the vocabulary projection there only;
``position_ids`` count from the first real token, so padding changes no position and a
sequence scores the same alone or in a padded batch (``tests/server/test_hf_causal.py``).

A text too long for the model loses its *start*, never its end: the end is where the
template asks its question.

Deep prompts (BBTv2) are served as by the masked backend: pre-hooks on the decoder layers
(``layers`` / ``h`` / ``decoder.layers`` under the base model) add slice l of a deep prompt
to the states entering layer l. With left padding each sequence's prompt sits at its own
positions, so a deep chunk hands the hooks a [S, n] position tensor
(:mod:`bbt.server._deep_hooks`); an architecture whose layers are not found there offers no
deep prompts. ``tests/server/test_deep_prompts_causal.py``.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np
from typing_extensions import Unpack

from bbt.errors import ConfigurationError
from bbt.protocol import (
    SCORE_CAPABILITY,
    Limits,
    ModelKind,
    ProtocolViolation,
    Usage,
)
from bbt.server._deep_hooks import DECODER_LAYER_PATHS
from bbt.server._embed_scale import ScaledRows, embedding_scale
from bbt.server._hf_common import (
    _CALIBRATION_TEXTS,
    DeviceSpec,
    DTypeSpec,
    ForwardChunk,
    HeadSpec,
    _Encoded,
    clipped_std,
)
from bbt.server._hf_score import causal_score
from bbt.server.hf import HFBackend

if TYPE_CHECKING:
    import torch

#: ``head_name`` of a causal backend: the model's own LM head, always.
CAUSAL_HEAD = "lm"


def detect_model_kind(model_path: str | Path | None) -> ModelKind:
    """``causal_lm`` when the model directory's ``config.json`` names a causal LM, else
    ``masked_lm`` (also for no path, the embedded default, or a directory without a config).

    Causal: an architecture ending in ``ForCausalLM`` or ``LMHeadModel`` (GPT-2's
    ``GPT2LMHeadModel``), or ``is_decoder: true``, and no ``*ForMaskedLM`` architecture.
    """
    if model_path is None:
        return "masked_lm"
    config = Path(model_path).expanduser() / "config.json"
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "masked_lm"  # the masked backend reports what is wrong with the directory
    if not isinstance(data, dict):
        return "masked_lm"
    archs = [a for a in data.get("architectures") or [] if isinstance(a, str)]
    if any(a.endswith("ForMaskedLM") for a in archs):
        return "masked_lm"
    if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        return "causal_lm"
    return "causal_lm" if data.get("is_decoder") is True else "masked_lm"


class CausalOptions(TypedDict, total=False):
    """The keyword arguments of :class:`~bbt.server.hf.HFBackend` that a causal LM takes:
    all but ``head`` (defaults and meaning as there)."""

    dtype: DTypeSpec
    device: DeviceSpec
    num_threads: int | str | None
    token_budget: int | None
    model_id: str | None
    limits: Limits | None
    tokenizer_cache_size: int
    tokenizer_cache_bytes: int


class HFCausalBackend(HFBackend):
    """A causal LM from a local Hugging Face directory (``AutoModelForCausalLM``).

    Args are those of :class:`~bbt.server.hf.HFBackend` less ``head`` (a causal LM always
    uses its own LM head); ``model_path`` is required.
    """

    def __init__(self, model_path: str | Path, **options: Unpack[CausalOptions]) -> None:
        # HFBackend's construction, with the causal hooks below (no head choice: the
        # model's own LM head scores).
        super().__init__(model_path, **options)
        # Prompt log-probabilities (protocol 1.6): a causal LM has them.
        caps = [*self._info.capabilities, SCORE_CAPABILITY]
        self._info = self._info.model_copy(update={"capabilities": caps})

    def score(self, texts: list[str]) -> tuple[list[float], list[int], Usage]:
        """Each text's summed token log-probability and token count (protocol 1.6)."""
        return causal_score(self, texts)

    # ------------------------------------------------------------------ construction hooks

    def _locate(self, model_path: str | Path | None) -> tuple[Path, str]:
        path = Path(str(model_path)).expanduser()
        if not path.exists() and path.is_absolute():
            raise ConfigurationError(f"model directory {path} does not exist")
        return path, str(path) if path.exists() else str(model_path)

    def _load(self, transformers: Any, source: str, head: HeadSpec) -> tuple[Any, Any]:
        try:
            config = transformers.AutoConfig.from_pretrained(source)
            self._tok = transformers.AutoTokenizer.from_pretrained(source)
            model = transformers.AutoModelForCausalLM.from_pretrained(source, dtype=self._dtype)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(f"cannot load a causal LM from {source!r}: {exc}") from None
        params = inspect.signature(model.forward).parameters
        if "position_ids" not in params:
            # Left padding needs explicit positions, or padding would shift them.
            raise ConfigurationError(
                f"{source!r}: {type(model).__name__}.forward takes no position_ids; bbt "
                "cannot batch it without changing its outputs"
            )
        # Older transformers call it num_logits_to_keep; without either, the full logits.
        self._keep_arg = next(
            (k for k in ("logits_to_keep", "num_logits_to_keep") if k in params), None
        )
        self._encoder = model.base_model
        return config, model

    def _attach_head(self, config: Any, head: HeadSpec) -> str:
        # The first hook after the table is read: a model that scales its embeddings inside
        # the embedding layer (Gemma: sqrt(H)) gets text rows, soft prompts, embed() and the
        # embedding statistics in that scaled space (bbt.server._embed_scale).
        scale = embedding_scale(self._model.get_input_embeddings())
        if scale is not None:
            self._word_emb = rows = ScaledRows(self._word_emb, scale)
            factor = float(rows.scale.float().item())  # the statistics of the scaled rows
            self._emb_mean *= factor
            self._emb_std *= abs(factor)
        return CAUSAL_HEAD

    def _layout(self, source: str, config: Any) -> None:
        # Only what comes BEFORE a text is kept (BOS); an appended EOS would sit between the
        # text and the token being predicted.
        self._prefix, _appended = self._special_layout(source)
        self._suffix = ()
        self._insert_at = len(self._prefix)
        self._pad_id = 0
        self._mask_id = -1  # no mask token; never matches a token id
        self._uses_token_types = False

    def _model_id(self, model_id: str | None, model_path: str | Path | None) -> str:
        return model_id or self.model_path.name or str(model_path)

    def _kind(self) -> dict[str, Any]:
        return {"kind": "causal_lm", "mask_token": None, "mask_token_id": None}

    # Deep prompts: HFBackend._add_deep_prompts hooks the decoder layers found here; the
    # prompt positions differ per sequence (left padding), so _forward_chunk hands the hooks
    # a [S, n] position tensor (bbt.server._deep_hooks).
    _LAYER_PATHS = DECODER_LAYER_PATHS

    def _hidden_std(self, num_layers: int) -> list[float]:
        """Std of the hidden states entering decoder layers 1..L-1 on the calibration
        sentences (as the masked backend's), each encoded as the backend does and run alone:
        no padding, hence no position to correct."""
        th = self._torch
        dev = self._word_emb.device
        values: list[list[Any]] = [[] for _ in range(1, num_layers)]
        with th.inference_mode():
            for text in _CALIBRATION_TEXTS:
                with self._tok_lock:  # not through the cache: the texts are no request's
                    body = self._tok(text, add_special_tokens=False)["input_ids"]
                ids = th.tensor([[*self._prefix, *body]], device=dev)
                states = self._encoder(
                    inputs_embeds=self._word_emb[ids], use_cache=False, output_hidden_states=True
                ).hidden_states
                for layer in range(1, num_layers):
                    values[layer - 1].append(states[layer][0].float().cpu().numpy().reshape(-1))
        return [clipped_std(np.concatenate(v).astype(np.float64)) for v in values]

    @property
    def bos_ids(self) -> tuple[int, ...]:
        """The special token ids put before every text (empty for GPT-2-style tokenizers)."""
        return self._prefix

    # ------------------------------------------------------------------ internals

    def _encode(self, text: str, n_tokens: int, index: int) -> _Encoded:
        body = self._body_ids(text)
        room = self._max_len - n_tokens - len(self._prefix)
        truncated = len(body) > room
        if truncated:
            # Keep the end: the score is read after the text's last token.
            body = body[len(body) - max(room, 0) :]
        ids = self._prefix + body
        if not ids:
            # Whitespace alone can tokenise to nothing; with no BOS the sequence would then
            # hold no token of its own to be scored after.
            raise ProtocolViolation(f"text {index} has no tokens", field=f"texts.{index}")
        # mask_index: the scored position in ``ids``, its last token.
        return _Encoded(ids=ids, mask_index=len(ids) - 1, truncated=truncated)

    def _forward_chunk(self, job: ForwardChunk) -> torch.Tensor:
        chunk, _, text_embs, prompts_t, n_tokens, longest, cand_t, pooling = job
        th = self._torch
        dev = self._word_emb.device
        n_seq = len(chunk)
        x = th.zeros((n_seq, longest, self._hidden), dtype=self._word_emb.dtype, device=dev)
        attn = th.zeros((n_seq, longest), dtype=th.long, device=dev)
        keep = th.zeros((n_seq, longest), dtype=th.long, device=dev)  # own tokens, for "mean"
        at = self._insert_at
        deep = n_tokens > 0 and prompts_t.dim() == 4  # slice 0 here, the hooks add the rest
        first = th.zeros(n_seq, dtype=th.long, device=dev)  # each prompt's first position
        for j, seqs in job.by_text().items():
            emb = text_embs[j]
            start = longest - (emb.shape[0] + n_tokens)  # left padding before it
            idx = th.tensor(seqs, device=dev)
            x[idx, start : start + at] = emb[:at]
            x[idx, start + at + n_tokens :] = emb[at:]
            if n_tokens:
                prompt_idx = th.tensor([chunk[s][0] for s in seqs], device=dev)
                rows = prompts_t[prompt_idx, 0] if deep else prompts_t[prompt_idx]
                x[idx, start + at : start + at + n_tokens] = rows
                first[idx] = start + at
            attn[idx, start:] = 1
            keep[idx, start:] = 1
            keep[idx, start + at : start + at + n_tokens] = 0
        if deep:
            self._deep_chunk = prompts_t[th.tensor([i for i, _ in chunk], device=dev)]
            self._deep_at = first[:, None] + th.arange(n_tokens, device=dev)
        # Positions count real tokens only, as if each sequence ran alone.
        positions = (attn.cumsum(dim=1) - 1).clamp(min=0)
        kwargs: dict[str, Any] = {
            "inputs_embeds": x,
            "attention_mask": attn,
            "position_ids": positions,
            "use_cache": False,
        }
        if cand_t is None:
            states = self._encoder(**kwargs).last_hidden_state
            hidden = self._mean_pool(states, keep) if pooling == "mean" else states[:, -1]
            return cast("torch.Tensor", hidden)
        if self._keep_arg is not None:
            kwargs[self._keep_arg] = 1
        logits = self._model(**kwargs).logits[:, -1]
        return cast("torch.Tensor", logits[:, cand_t])


__all__ = ["CAUSAL_HEAD", "CausalOptions", "HFCausalBackend", "detect_model_kind"]
