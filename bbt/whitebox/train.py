"""Gradient training on the local model: the white-box references of black-box tuning.

Three methods, each trained with Adam on the cross-entropy over the verbalizer words at the
scored position (the loss BBT minimises without gradients):

- ``prompt-tuning`` (Lester et al., 2021): a soft prompt [n, H] at the input, placed where
  the server places BBT's prompt, so the result can serve as p0 of a black-box run;
- ``p-tuning-v2`` (Liu et al., 2022): trainable key/value prefixes at every layer, through
  peft's prefix tuning;
- ``lora`` (Hu et al., 2022): low-rank adapters on the attention projections, through peft.

Everything else (model, tokenisation, template, head) stays frozen.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bbt.errors import ConfigurationError
from bbt.protocol import ModelInfo
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task
from bbt.whitebox._model import LocalModel, require_peft

WHITEBOX_METHODS: tuple[str, ...] = ("prompt-tuning", "p-tuning-v2", "lora")
#: Adam's step size by method when none is given.
DEFAULT_LR: dict[str, float] = {"prompt-tuning": 3e-3, "p-tuning-v2": 1e-2, "lora": 1e-3}
#: Examples per gradient step (a k-shot training set is usually one batch).
BATCH_SIZE = 32
#: Rows scored per forward pass when predicting.
PREDICT_BATCH = 64

Scorer = Callable[[list[str]], np.ndarray[Any, Any]]


@dataclass
class WhiteboxResult:
    """What :func:`train_whitebox` trained: how long, how big, and a predictor."""

    method: str
    steps: int
    train_seconds: float
    trainable_params: int
    prompt: np.ndarray[Any, Any] | None  # [n_tokens, H] for prompt tuning, else None
    losses: list[float] = field(default_factory=list)  # training loss before each step
    model_info: ModelInfo | None = None  # the model trained on, as the server describes it
    _scorer: Scorer | None = field(default=None, repr=False)
    _texts: Callable[[Sequence[Example]], list[str]] | None = field(default=None, repr=False)

    def logits(self, examples: Sequence[Example]) -> np.ndarray[Any, Any]:
        """Verbalizer logits [B, C] of ``examples``."""
        if self._scorer is None or self._texts is None:
            raise ConfigurationError("this result holds no model to predict with")
        texts = self._texts(examples)
        parts = [
            self._scorer(texts[i : i + PREDICT_BATCH]) for i in range(0, len(texts), PREDICT_BATCH)
        ]
        return np.concatenate(parts, axis=0) if parts else np.zeros((0, 0), dtype=np.float32)

    def predict(self, examples: Sequence[Example]) -> np.ndarray[Any, Any]:
        """Class ids [B] of ``examples``."""
        ids: np.ndarray[Any, Any] = self.logits(examples).argmax(axis=-1)
        return ids


def _labels(train: Sequence[Example]) -> np.ndarray[Any, Any]:
    if not train:
        raise ConfigurationError("white-box training needs at least one training example")
    if any(e.label is None for e in train):
        raise ConfigurationError("white-box training needs labelled examples")
    return np.array([e.label for e in train], dtype=np.int64)


def _vocab_init(model: LocalModel, n_tokens: int, seed: int) -> Any:
    """n embeddings of distinct vocabulary tokens drawn with ``seed`` (BBT's vocab init)."""
    emb = model.embeddings()
    rng = np.random.Generator(np.random.PCG64(seed))
    ids = rng.choice(int(emb.shape[0]), size=n_tokens, replace=False)
    return emb[model.torch.tensor(ids, device=model.device)].detach().clone().float()


def _peft_net(model: LocalModel, method: str, n_tokens: int) -> Any:
    peft = require_peft()
    trunk = model.trunk()
    task_type = "CAUSAL_LM" if model.causal else "FEATURE_EXTRACTION"
    config: Any
    if method == "p-tuning-v2":
        config = peft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=n_tokens)
    else:
        mapping = peft.utils.other.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
        targets = mapping.get(getattr(trunk.config, "model_type", ""))
        if targets is None:
            raise ConfigurationError(
                f"LoRA does not know the attention layers of {trunk.config.model_type!r} models"
            )
        config = peft.LoraConfig(task_type=task_type, r=8, lora_alpha=16, target_modules=targets)
    with warnings.catch_warnings():
        # peft probes deprecated transformers attributes and adjusts GPT-2's Conv1D layers
        # itself; neither is something a caller can act on.
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", UserWarning)
        net = peft.get_peft_model(trunk, config)
    net.train()
    return net


def train_whitebox(
    method: str,
    *,
    task: Task,
    train: Sequence[Example],
    model_dir: str | None = None,
    n_tokens: int = 10,
    steps: int = 100,
    lr: float | None = None,
    seed: int = 0,
) -> WhiteboxResult:
    """Train ``method`` (one of :data:`WHITEBOX_METHODS`) on ``train`` with gradients on the
    local model (``model_dir``; None: the embedded default). ``n_tokens``: prompt or prefix
    length (unused by LoRA)."""
    if method not in WHITEBOX_METHODS:
        raise ConfigurationError(
            f"unknown white-box method {method!r}; choose one of {', '.join(WHITEBOX_METHODS)}"
        )
    if steps < 0 or n_tokens < 1:
        raise ConfigurationError("white-box training needs steps >= 0 and n_tokens >= 1")
    labels = _labels(train)
    model = LocalModel(model_dir, task)
    torch = model.torch
    torch.manual_seed(seed)
    texts = model.texts(train)
    prompt_param: Any = None
    net: Any = None
    if method == "prompt-tuning":
        prompt_param = torch.nn.Parameter(_vocab_init(model, n_tokens, seed))
        params = [prompt_param]

        def forward(batch: list[str]) -> Any:
            return model.prompt_logits(prompt_param, batch)
    else:
        net = _peft_net(model, method, n_tokens)
        params = [p for p in net.parameters() if p.requires_grad]

        def forward(batch: list[str]) -> Any:
            return model.plain_logits(net, batch)

    optim = torch.optim.Adam(params, lr=DEFAULT_LR[method] if lr is None else lr)
    y = torch.from_numpy(labels).to(model.device)
    rng = np.random.Generator(np.random.PCG64(seed))
    losses: list[float] = []
    start = time.perf_counter()
    for _ in range(steps):
        rows = (
            rng.choice(len(texts), size=BATCH_SIZE, replace=False)
            if len(texts) > BATCH_SIZE
            else np.arange(len(texts))
        )
        logits = forward([texts[i] for i in rows])
        loss = torch.nn.functional.cross_entropy(logits, y[torch.from_numpy(rows).to(y.device)])
        optim.zero_grad()
        loss.backward()
        optim.step()
        losses.append(float(loss.detach()))
    seconds = time.perf_counter() - start
    if net is not None:
        net.eval()

    def scorer(batch: list[str]) -> np.ndarray[Any, Any]:
        with torch.no_grad():
            out: np.ndarray[Any, Any] = forward(batch).cpu().numpy()
        return out

    prompt = None if prompt_param is None else prompt_param.detach().cpu().numpy()
    return WhiteboxResult(
        method=method,
        steps=steps,
        train_seconds=seconds,
        trainable_params=int(sum(p.numel() for p in params)),
        prompt=None if prompt is None else np.ascontiguousarray(prompt, dtype=np.float32),
        losses=losses,
        model_info=model.info,
        _scorer=scorer,
        _texts=model.texts,
    )
