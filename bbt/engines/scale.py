"""Per-architecture input-embedding scale: what an engine multiplies token embeddings by.

Some architectures scale the rows of their input-embedding table before the first layer:
the Gemma family multiplies them by ``sqrt(hidden_size)`` (rounded to the model's dtype, as
vLLM's ``normalizer`` buffer and SGLang's are). Engines apply that scale to the embeddings
of token ids only; embeddings sent as ``prompt_embeds`` / ``input_embeds`` go to the first
layer as given. So rows taken from the raw table (embedding-table mode) must be scaled by
bbt, and the std that sizes BBT's projection is the scaled table's, in both modes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bbt.engines.model import FloatArray, ModelFacts
from bbt.errors import ConfigurationError

#: ``model_type`` values whose token embeddings are multiplied by sqrt(hidden_size).
SQRT_HIDDEN_MODEL_TYPES = frozenset(
    {
        "gemma",
        "gemma2",
        "gemma3",
        "gemma3_text",
        "gemma3n",
        "gemma3n_text",
        "gemma4",
        "gemma4_text",
        "paligemma",
    }
)


def _round_to(value: float, dtype: str | None) -> float:
    """``value`` as the model's dtype holds it (the engines cast the scale to it)."""
    if dtype in ("bfloat16", "bf16"):
        bits = np.array([value], dtype=np.float32).view(np.uint32)[0]
        # Round to nearest even on the 16 bits bfloat16 keeps.
        rounded = (int(bits) + 0x7FFF + ((int(bits) >> 16) & 1)) & 0xFFFF0000
        return float(np.array([rounded], dtype=np.uint32).view(np.float32)[0])
    if dtype in ("float16", "fp16", "half"):
        return float(np.float16(value))
    return float(np.float32(value))


def _model_types(config: dict[str, Any]) -> list[str]:
    text = config.get("text_config")
    found = [str(config.get("model_type") or "")]
    if isinstance(text, dict):
        found.append(str(text.get("model_type") or ""))
    return [t for t in found if t]


def embedding_scale(config: dict[str, Any] | None, hidden_size: int) -> float:
    """The factor the engine multiplies token embeddings by for the model of ``config``
    (1.0 for architectures that do not scale, or when no config is given)."""
    if not config:
        return 1.0
    if not any(t in SQRT_HIDDEN_MODEL_TYPES for t in _model_types(config)):
        return 1.0
    dtype = config.get("torch_dtype") or config.get("dtype")
    text = config.get("text_config")
    if dtype is None and isinstance(text, dict):
        dtype = text.get("torch_dtype") or text.get("dtype")
    return _round_to(math.sqrt(hidden_size), str(dtype) if dtype else None)


def apply_scale(
    facts: ModelFacts,
    table: FloatArray | None,
    config: dict[str, Any] | None,
    scale: float | None = None,
) -> tuple[ModelFacts, FloatArray | None]:
    """``facts`` and ``table`` as the engine's first layer sees token embeddings: both
    multiplied by ``scale`` (``None``: :func:`embedding_scale` of ``config``)."""
    if scale is None:
        scale = embedding_scale(config, facts.hidden_size)
    if not (math.isfinite(scale) and scale > 0):
        raise ConfigurationError(f"embedding_scale must be positive; got {scale}")
    if scale == 1.0:
        return facts, table
    scaled = facts.__class__(
        hidden_size=facts.hidden_size,
        vocab_size=facts.vocab_size,
        num_layers=facts.num_layers,
        embedding_mean=facts.embedding_mean * scale,
        embedding_std=facts.embedding_std * scale,
        std_source=f"{facts.std_source}, x{scale:g} (the engine's embedding scale)",
        embedding_scale=scale,
    )
    return scaled, (None if table is None else table * np.float32(scale))
