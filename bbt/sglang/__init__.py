"""Black-Box Tuning against an SGLang server (no extra to install: the embeddings travel as
JSON numbers).

:class:`SGLangService` is a :class:`bbt.client.Service` over SGLang's native ``/generate``
API with ``input_embeds`` (``python -m sglang.launch_server ... --disable-radix-cache``);
``bbt tune --base-url sglang+http://HOST:PORT?config=PATH&embeddings=PATH`` selects it from
the command line. docs/sglang.md has the server command line and what a candidate costs.
"""

from bbt.sglang._codec import (
    MIN_SGLANG_VERSION,
    NEWEST_CHECKED_SGLANG,
    URL_OPTIONS,
    URL_SCHEME_PREFIX,
    generate_body,
    generate_content,
    is_sglang_url,
    parse_sglang_url,
    read_generate,
    rows_json,
    rows_text,
)
from bbt.sglang._service import SGLangService, service_from_settings

__all__ = [
    "MIN_SGLANG_VERSION",
    "NEWEST_CHECKED_SGLANG",
    "URL_OPTIONS",
    "URL_SCHEME_PREFIX",
    "SGLangService",
    "generate_body",
    "generate_content",
    "is_sglang_url",
    "parse_sglang_url",
    "read_generate",
    "rows_json",
    "rows_text",
    "service_from_settings",
]
