"""The ``vllm+http://host:port?options`` form that selects the vLLM adapter in ``--base-url``."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from bbt.errors import ConfigurationError

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
_INT_OPTIONS = {"hidden_size", "vocab_size", "max_concurrency", "top_logprobs"}


def parse_vllm_url(url: str) -> tuple[str, dict[str, Any]]:
    """``vllm+http://host:8000?config=PATH&embeddings=PATH`` -> (``http://host:8000``,
    keyword arguments for :class:`VLLMService`). Unknown parameters are an error."""
    raw = url[len(URL_SCHEME_PREFIX) :] if is_vllm_url(url) else url
    parts = urlsplit(raw)
    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_OPTIONS:
            known = ", ".join(URL_OPTIONS)
            raise ConfigurationError(f"unknown option {name!r} in the vLLM URL; known: {known}")
        key = URL_OPTIONS[name]
        try:
            if key in _INT_OPTIONS:
                options[key] = int(value)
            elif key in ("embedding_std", "embedding_scale"):
                options[key] = float(value)
            else:
                options[key] = value
        except ValueError:
            raise ConfigurationError(
                f"option {name}={value!r} in the vLLM URL is not a number"
            ) from None
    if parts.username or parts.password:
        raise ConfigurationError(
            "the vLLM URL holds credentials: pass the key with --api-key or BBT_API_KEY instead"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), options
