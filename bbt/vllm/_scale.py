"""The input-embedding scale, now shared by every engine adapter: see :mod:`bbt.engines.scale`
(this module keeps the old import path)."""

from bbt.engines.scale import SQRT_HIDDEN_MODEL_TYPES, apply_scale, embedding_scale

__all__ = ["SQRT_HIDDEN_MODEL_TYPES", "apply_scale", "embedding_scale"]
