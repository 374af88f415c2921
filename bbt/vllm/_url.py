"""The ``vllm+http://host:port?options`` form that selects the vLLM adapter in ``--base-url``."""

from __future__ import annotations

from typing import Any

from bbt.client.engine_urls import split_engine_url

#: The URL scheme prefix that selects this adapter in ``bbt tune --base-url``.
URL_SCHEME_PREFIX = "vllm+"


def is_vllm_url(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith(URL_SCHEME_PREFIX)


#: Query parameters of a ``vllm+http://`` URL and the keyword each sets.
URL_OPTIONS: dict[str, str] = {
    "config": "config",
    "embeddings": "embedding_table",
    "embedding_key": "embedding_key",
    "hidden_size": "hidden_size",
    "embedding_std": "embedding_std",
    "vocab_size": "vocab_size",
    "embedding_scale": "embedding_scale",
    "mode": "mode",
    "concurrency": "max_concurrency",
    "top_logprobs": "top_logprobs",
    "dtype": "dtype",
}
_INT_OPTIONS = frozenset({"hidden_size", "vocab_size", "max_concurrency", "top_logprobs"})


def parse_vllm_url(url: str) -> tuple[str, dict[str, Any]]:
    """``vllm+http://host:8000?config=PATH&embeddings=PATH`` -> (``http://host:8000``,
    keyword arguments for :class:`VLLMService`). Unknown parameters are an error."""
    return split_engine_url(
        url,
        URL_SCHEME_PREFIX,
        URL_OPTIONS,
        ints=_INT_OPTIONS,
        floats=frozenset({"embedding_std", "embedding_scale"}),
        engine="vLLM",
    )
