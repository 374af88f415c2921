"""The model facts the vLLM adapter needs, now shared by every engine adapter: see
:mod:`bbt.engines.model` (this module keeps the old import path)."""

from bbt.engines.model import (
    EMBEDDING_KEYS,
    FloatArray,
    ModelFacts,
    load_embedding_table,
    model_facts,
    read_config,
)

__all__ = [
    "EMBEDDING_KEYS",
    "FloatArray",
    "ModelFacts",
    "load_embedding_table",
    "model_facts",
    "read_config",
]
