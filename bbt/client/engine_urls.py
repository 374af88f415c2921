"""``ENGINE+http://host:port?options`` URLs: how ``--base-url`` selects an engine adapter.

One parser for every adapter (``vllm+``, ``sglang+``): the prefix names the engine, the
query holds the adapter's options, and credentials never ride in the URL.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from bbt.errors import ConfigurationError

__all__ = [
    "ENGINE_PREFIXES",
    "TABLE_FLOAT_OPTIONS",
    "TABLE_INT_OPTIONS",
    "TABLE_URL_OPTIONS",
    "engine_of",
    "has_prefix",
    "split_engine_url",
]

#: URL scheme prefixes that select an engine adapter, and the engine each names.
ENGINE_PREFIXES: dict[str, str] = {"vllm+": "vllm", "sglang+": "sglang"}


#: Query parameters every adapter's URL takes (the model's files and facts), and the keyword
#: each sets; an adapter adds its own after them.
TABLE_URL_OPTIONS: dict[str, str] = {
    "config": "config",
    "embeddings": "embedding_table",
    "embedding_key": "embedding_key",
    "hidden_size": "hidden_size",
    "embedding_std": "embedding_std",
    "vocab_size": "vocab_size",
    "embedding_scale": "embedding_scale",
}
#: Which of those keywords take whole numbers, and which decimals.
TABLE_INT_OPTIONS = frozenset({"hidden_size", "vocab_size", "max_concurrency"})
TABLE_FLOAT_OPTIONS = frozenset({"embedding_std", "embedding_scale"})


def has_prefix(url: str | None, prefix: str) -> bool:
    """Whether ``url`` starts with the scheme prefix ``prefix`` (``"vllm+"``), in any case."""
    return bool(url) and str(url).lower().startswith(prefix)


def engine_of(url: str | None) -> str | None:
    """The engine a ``--base-url`` selects (``"vllm"``, ``"sglang"``), or ``None``."""
    low = str(url or "").lower()
    return next((name for p, name in ENGINE_PREFIXES.items() if low.startswith(p)), None)


def split_engine_url(
    url: str,
    prefix: str,
    options: Mapping[str, str],
    *,
    ints: frozenset[str] = frozenset(),
    floats: frozenset[str] = frozenset(),
    engine: str = "engine",
) -> tuple[str, dict[str, Any]]:
    """``PREFIXhttp://host:port?name=value`` -> (``http://host:port``, keyword arguments).

    ``options`` maps each query parameter to the keyword it sets; keywords in ``ints`` /
    ``floats`` are converted. Unknown parameters, non-numbers and credentials are errors.
    """
    raw = url[len(prefix) :] if url.lower().startswith(prefix) else url
    parts = urlsplit(raw)
    out: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in options:
            known = ", ".join(options)
            raise ConfigurationError(f"unknown option {name!r} in the {engine} URL; known: {known}")
        key = options[name]
        try:
            if key in ints:
                out[key] = int(value)
            elif key in floats:
                out[key] = float(value)
            else:
                out[key] = value
        except ValueError:
            raise ConfigurationError(
                f"option {name}={value!r} in the {engine} URL is not a number"
            ) from None
    if parts.username or parts.password:
        raise ConfigurationError(
            f"the {engine} URL holds credentials: pass the key with --api-key or BBT_API_KEY "
            "instead"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), out
