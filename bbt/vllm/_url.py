"""The ``vllm+http://host:port?options`` form that selects the vLLM adapter in ``--base-url``."""

from __future__ import annotations

from typing import Any

from bbt.client.engine_urls import (
    TABLE_FLOAT_OPTIONS,
    TABLE_INT_OPTIONS,
    TABLE_URL_OPTIONS,
    has_prefix,
    split_engine_url,
)

#: The URL scheme prefix that selects this adapter in ``bbt tune --base-url``.
URL_SCHEME_PREFIX = "vllm+"


def is_vllm_url(url: str | None) -> bool:
    return has_prefix(url, URL_SCHEME_PREFIX)


#: Query parameters of a ``vllm+http://`` URL and the keyword each sets.
URL_OPTIONS: dict[str, str] = {
    **TABLE_URL_OPTIONS,
    "mode": "mode",
    "concurrency": "max_concurrency",
    "top_logprobs": "top_logprobs",
    "dtype": "dtype",
}
INT_OPTIONS = TABLE_INT_OPTIONS | {"top_logprobs"}
FLOAT_OPTIONS = TABLE_FLOAT_OPTIONS


def parse_vllm_url(url: str) -> tuple[str, dict[str, Any]]:
    """``vllm+http://host:8000?config=PATH&embeddings=PATH`` -> (``http://host:8000``,
    keyword arguments for :class:`VLLMService`). Unknown parameters are an error."""
    return split_engine_url(
        url, URL_SCHEME_PREFIX, URL_OPTIONS, ints=INT_OPTIONS, floats=FLOAT_OPTIONS, engine="vLLM"
    )
