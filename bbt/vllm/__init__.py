"""Black-Box Tuning against a vLLM server (``pip install 'bbt[vllm]'``).

:class:`VLLMService` is a :class:`bbt.client.Service` over vLLM's OpenAI-compatible API with
prompt embeddings (``vllm serve ... --enable-prompt-embeds``); ``bbt tune --base-url
vllm+http://HOST:PORT?config=PATH`` selects it from the command line. docs/vllm.md has the
server command line, what a generation costs and a worked example.
"""

from bbt.vllm._layout import special_prefix
from bbt.vllm._model import ModelFacts, load_embedding_table, model_facts, read_config
from bbt.vllm._scale import apply_scale, embedding_scale
from bbt.vllm._service import (
    CHAT_TEMPLATE_PATH,
    DEFAULT_TOP_LOGPROBS,
    MAX_LOGPROB_TOKEN_IDS,
    MIN_VLLM_VERSION,
    URL_OPTIONS,
    VLLMService,
    is_vllm_url,
    parse_vllm_url,
    service_from_settings,
)
from bbt.vllm._wire import (
    DEFAULT_MISSING_MARGIN,
    decode_embeds,
    encode_embeds,
    fill_candidates,
    parse_version,
)


def chat_template() -> str:
    """bbt's verbatim chat template for base models (the text of :data:`CHAT_TEMPLATE_PATH`)."""
    return CHAT_TEMPLATE_PATH.read_text(encoding="utf-8")


__all__ = [
    "CHAT_TEMPLATE_PATH",
    "DEFAULT_MISSING_MARGIN",
    "DEFAULT_TOP_LOGPROBS",
    "MAX_LOGPROB_TOKEN_IDS",
    "MIN_VLLM_VERSION",
    "URL_OPTIONS",
    "ModelFacts",
    "VLLMService",
    "apply_scale",
    "chat_template",
    "decode_embeds",
    "embedding_scale",
    "encode_embeds",
    "fill_candidates",
    "is_vllm_url",
    "load_embedding_table",
    "model_facts",
    "parse_version",
    "parse_vllm_url",
    "read_config",
    "service_from_settings",
    "special_prefix",
]
