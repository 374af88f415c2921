"""The local model as the reference server scores it, with gradients.

White-box training must score exactly what ``bbt serve`` scores, or a prompt trained here
would not mean the same thing when a black-box run starts from it. So the model, its
tokenisation, where the soft prompt goes, the mask (or last) position and the head all come
from the server's own backend (:class:`~bbt.server.hf.HFBackend` or
:class:`~bbt.server.hf_causal.HFCausalBackend`); this module only runs its forward pass
outside ``inference_mode`` so that gradients reach the prompt, the prefix or the adapters.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.protocol import ModelInfo
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task, verbalizer_ids

WHITEBOX_EXTRA_HINT = "pip install 'bbt[whitebox]'"


def _require(module: str, needed_for: str) -> Any:
    """``import module``, or one clear line saying what it is ``needed_for`` and how to
    install it."""
    try:
        return importlib.import_module(module)
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ConfigurationError(f"{needed_for}: {WHITEBOX_EXTRA_HINT}") from None


def require_torch() -> Any:
    return _require("torch", "white-box training needs torch, transformers and peft")


def require_peft() -> Any:
    return _require("peft", "prefix tuning and LoRA need peft")


class LocalModel:
    """A served model (the embedded default or ``model_dir``), frozen, for training around it.

    The backend's white-box hooks (``forward``, ``encode``, ``trunk``, ``head_logits``...) run
    its own forward pass, so a prompt scores here as it scores through the server.
    """

    def __init__(self, model_dir: str | None, task: Task) -> None:
        self.torch = require_torch()
        from bbt.server.hf import HFBackend
        from bbt.server.hf_causal import HFCausalBackend, detect_model_kind

        causal = detect_model_kind(model_dir) == "causal_lm"
        self.backend: Any = (
            HFCausalBackend(model_dir, dtype="float32", device="auto")
            if causal and model_dir is not None
            else HFBackend(model_dir, dtype="float32", device="auto")
        )
        self.causal = causal
        self.service = LocalClient(self.backend)
        self.info: ModelInfo = self.service.model_info()
        self.task = task.for_kind(self.info.kind, self.info.id)
        self.candidate_ids = verbalizer_ids(task, self.service)
        self.backend.freeze()
        self.device = self.backend.word_embeddings.device
        self.cand_t = self.torch.tensor(self.candidate_ids, device=self.device)

    @property
    def hidden_size(self) -> int:
        return int(self.info.hidden_size)

    def texts(self, examples: Sequence[Example]) -> list[str]:
        return [self.task.render_for(self.info, e.fields) for e in examples]

    def embeddings(self) -> Any:
        """The input embedding table [V, H] (frozen)."""
        return self.backend.word_embeddings

    def prompt_logits(self, prompt: Any, texts: list[str]) -> Any:
        """Candidate logits [B, C] of ``texts`` with soft prompt ``prompt`` [n, H] (a tensor
        that may require grad) placed as the server places it."""
        b = self.backend
        n = int(prompt.shape[0])
        encoded = [b.encode(t, n, j) for j, t in enumerate(texts)]
        emb = b.word_embeddings
        text_embs = {
            j: emb[self.torch.tensor(e.ids, device=self.device)] for j, e in enumerate(encoded)
        }
        longest = max(len(e.ids) for e in encoded) + n
        chunk = [(0, j) for j in range(len(texts))]
        from bbt.server.hf import ForwardChunk

        job = ForwardChunk(chunk, encoded, text_embs, prompt[None], n, longest, self.cand_t)
        out = b.forward(job)
        return out.float()

    def plain_inputs(self, texts: list[str]) -> tuple[Any, Any, Any]:
        """(input ids [B, T], attention mask [B, T], scored positions [B]), right-padded."""
        encoded = [self.backend.encode(t, 0, j) for j, t in enumerate(texts)]
        width = max(len(e.ids) for e in encoded)
        ids = np.full((len(texts), width), int(self.backend.pad_id), dtype=np.int64)
        attn = np.zeros((len(texts), width), dtype=np.int64)
        for i, e in enumerate(encoded):
            ids[i, : len(e.ids)] = e.ids
            attn[i, : len(e.ids)] = 1
        pos = np.array([e.mask_index for e in encoded], dtype=np.int64)
        th = self.torch
        return (
            th.from_numpy(ids).to(self.device),
            th.from_numpy(attn).to(self.device),
            th.from_numpy(pos).to(self.device),
        )

    def trunk(self) -> Any:
        """The module that peft wraps: the causal LM (logits out), or the masked LM's encoder
        (hidden states out, the head applied by :meth:`plain_logits`)."""
        return self.backend.trunk()

    def plain_logits(self, net: Any, texts: list[str]) -> Any:
        """Candidate logits [B, C] of ``texts`` through ``net`` (a peft-wrapped
        :meth:`trunk`), without a soft prompt at the input."""
        ids, attn, pos = self.plain_inputs(texts)
        rows = self.torch.arange(ids.shape[0], device=self.device)
        with warnings.catch_warnings():
            # peft hands prefixes to the model as past_key_values, which transformers 5
            # deprecates in favour of a cache object; the values are the same.
            warnings.simplefilter("ignore", FutureWarning)
            out = net(input_ids=ids, attention_mask=attn)
        if self.causal:
            return out.logits[rows, pos][:, self.cand_t].float()
        hidden = out.last_hidden_state[rows, pos]
        return self.backend.head_logits(hidden, self.cand_t).float()
