"""What bbt's engine adapters share (:mod:`bbt.vllm`, :mod:`bbt.sglang`).

:class:`EngineService` is the service skeleton (settings and ``ENGINE+http://`` URLs,
transport, retries, fan-out, usage, model discovery, tokenization, embedding-table
sequences); :mod:`bbt.engines.codec` the engine-neutral parts of a codec;
:mod:`bbt.engines.model` and :mod:`bbt.engines.scale` what bbt must know about the served
model that an engine's API does not say. An engine contributes its codec and capabilities.
"""

from bbt.engines.model import ModelFacts, load_embedding_table, model_facts, read_config
from bbt.engines.scale import apply_scale, embedding_scale
from bbt.engines.service import EngineOptions, EngineService

__all__ = [
    "EngineOptions",
    "EngineService",
    "ModelFacts",
    "apply_scale",
    "embedding_scale",
    "load_embedding_table",
    "model_facts",
    "read_config",
]
