"""The SGLang adapter's codec: URL options, request bodies, answers, capabilities. No I/O.

SGLang's native ``POST /generate`` (``GenerateReqInput`` in
``sglang/srt/managers/io_struct.py``) takes a whole input as embeddings (``input_embeds``:
one ``[L, H]`` list of float lists, or a batch of them), never embeddings mixed with text,
so bbt builds every sequence ``BOS? + soft prompt + text`` from the model's input-embedding
table itself, as the vLLM adapter's embedding-table mode does. ``token_ids_logprob`` with
``return_logprob`` returns the log-probs of exactly the verbalizer ids at each generated
position; with ``max_new_tokens: 1`` that is the next-token position after the input.
"""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import SecretStr

from bbt.client.engine_urls import (
    TABLE_FLOAT_OPTIONS,
    TABLE_INT_OPTIONS,
    TABLE_URL_OPTIONS,
    has_prefix,
    split_engine_url,
)
from bbt.client.failures import error_for_status
from bbt.client.redaction import redact
from bbt.engines import codec as engine_codec
from bbt.engines.codec import json_body
from bbt.engines.model import ModelFacts
from bbt.errors import (
    APIStatusError,
    ConfigurationError,
    ProtocolError,
)
from bbt.protocol import ModelInfo

#: The URL scheme prefix that selects this adapter in ``bbt tune --base-url``.
URL_SCHEME_PREFIX = "sglang+"
#: Oldest and newest SGLang releases whose request code bbt's bodies were checked against
#: (tests/engines/test_sglang_contract.py, scripts/engine_contracts.sh).
MIN_SGLANG_VERSION = (0, 5, 4)
NEWEST_CHECKED_SGLANG = (0, 5, 23)
#: What SGLang answers an ``input_embeds`` request without ``--disable-radix-cache``.
RADIX_CACHE_HINT = "disable-radix-cache"
#: Element types the embeddings can be written in: each number is the shortest decimal
#: that reads back as that type (float16 halves the bytes; the engine casts to its dtype).
WireDType = Literal["float32", "float16"]
WIRE_DTYPES: tuple[WireDType, ...] = ("float32", "float16")

#: Query parameters of a ``sglang+http://`` URL and the keyword each sets.
URL_OPTIONS: dict[str, str] = {
    **TABLE_URL_OPTIONS,
    "concurrency": "max_concurrency",
    "per_request": "sequences_per_request",
    "dtype": "dtype",
}
INT_OPTIONS = TABLE_INT_OPTIONS | {"sequences_per_request"}
FLOAT_OPTIONS = TABLE_FLOAT_OPTIONS


def is_sglang_url(url: str | None) -> bool:
    return has_prefix(url, URL_SCHEME_PREFIX)


def parse_sglang_url(url: str) -> tuple[str, dict[str, Any]]:
    """``sglang+http://host:30000?config=PATH&embeddings=PATH`` -> (``http://host:30000``,
    keyword arguments for :class:`~bbt.sglang.SGLangService`)."""
    return split_engine_url(
        url, URL_SCHEME_PREFIX, URL_OPTIONS, ints=INT_OPTIONS, floats=FLOAT_OPTIONS, engine="SGLang"
    )


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"0.5.23"`` / ``"v0.4.6.post1"`` -> ``(0, 5, 23)``; ``None`` when not a version."""
    parts = text.strip().lstrip("v").split(".")[:3]
    digits = ["".join(ch for ch in p if ch.isdigit()) for p in parts]
    if not digits or not all(digits):
        return None
    return tuple(int(d) for d in digits)


# --------------------------------------------------------------------------- wire


#: The longest text a number of each type takes (numpy's shortest repr, |x| < 1e8): what
#: a plan counts for every soft-prompt number, so planned bytes bound the bytes sent.
WIDEST_NUMBER = {"float32": 15, "float16": 11}


def rows_text(rows: np.ndarray[Any, Any], dtype: WireDType) -> str:
    """``[L, H]`` rows as JSON text: each number the shortest decimal that reads back as
    ``dtype`` (numpy's shortest repr), so no digit beyond the type's precision is sent."""
    typed = np.asarray(rows, dtype=np.float16 if dtype == "float16" else np.float32)
    return "[" + ",".join("[" + ",".join(row) + "]" for row in typed.astype(str)) + "]"


def number_chars(rows: np.ndarray[Any, Any], dtype: WireDType) -> int:
    """How many characters the numbers of ``rows`` take in :func:`rows_text`."""
    typed = np.asarray(rows, dtype=np.float16 if dtype == "float16" else np.float32)
    return int(np.char.str_len(typed.astype(str)).sum())


def rows_json(rows: np.ndarray[Any, Any], dtype: WireDType) -> list[list[float]]:
    """:func:`rows_text` as Python lists (the values the server reads)."""
    value: list[list[float]] = json.loads(rows_text(rows, dtype))
    return value


def status_error(response: httpx.Response, secret: SecretStr | None) -> APIStatusError:
    """SGLang's error bodies: ``{"error": {"message": ...}}`` (a ValueError in the request
    path), ``{"error": "..."}`` (the JSON contract gate) or FastAPI's ``{"detail": ...}``."""
    message = response.reason_phrase or "error"
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body.get("detail"))
        if isinstance(err, dict):
            message = str(err.get("message") or message)
        elif err is not None:
            message = str(err)
    elif response.text.strip():
        message = f"{message}: {response.text[:200].strip()}"
    return error_for_status(response, redact(message, secret))


def explain(exc: APIStatusError, root: str) -> Exception:
    """A misconfigured server's answer as a settings error that says what to change."""
    if RADIX_CACHE_HINT in exc.message:
        return ConfigurationError(
            f"the SGLang server at {root} does not take input embeddings with its radix "
            "cache on: start it with --disable-radix-cache (see docs/sglang.md)"
        )
    return exc


# --------------------------------------------------------------------------- capabilities


def model_info(card: dict[str, Any], facts: ModelFacts, per: int) -> ModelInfo:
    """bbt's :class:`ModelInfo` of a served model (one ``/v1/models`` card): one prompt on
    up to ``per`` texts per ``/generate`` request."""
    return engine_codec.model_info(card, facts, per, max(1, min(facts.vocab_size, 4096)))


def check_job(info: ModelInfo, arr: np.ndarray[Any, Any], texts: list[str], ids: list[int]) -> None:
    """Refuse, before any request, a logits job SGLang cannot score."""
    engine_codec.check_job(
        info, arr, texts, ids, lambda n: f"{n} candidate ids; at most {info.limits.max_candidates}"
    )


# --------------------------------------------------------------------------- bodies


def tokenize_body(model: str, texts: list[str], add_special_tokens: bool) -> dict[str, Any]:
    """SGLang's ``/tokenize`` takes a list of prompts in one request."""
    return {"model": model, "prompt": texts, "add_special_tokens": add_special_tokens}


def read_tokenize(answer: Any, count: int) -> list[list[int]]:
    ids = answer.get("tokens") if isinstance(answer, dict) else None
    ok = (
        isinstance(ids, list)
        and len(ids) == count
        and all(isinstance(row, list) and all(isinstance(i, int) for i in row) for row in ids)
    )
    if not ok:
        raise ProtocolError(f"/tokenize answered without {count} lists of token ids")
    return [list(row) for row in ids]  # type: ignore[union-attr]


def generate_options(ids: list[int]) -> dict[str, Any]:
    """Everything of a ``/generate`` body but its input: one greedy token per sequence,
    with the log-probs of exactly ``ids`` at that token's position."""
    return {
        "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
        "return_logprob": True,
        "token_ids_logprob": ids,
        "stream": False,
    }


def generate_content(sequences: list[str], ids: list[int]) -> bytes:
    """A ``/generate`` body as sent: ``input_embeds`` a batch of sequences given as
    :func:`rows_text`, then :func:`generate_options`."""
    rest = json_body(generate_options(ids))[1:]
    return b'{"input_embeds":[' + ",".join(sequences).encode() + b"]," + rest


def generate_body(embeds: list[list[list[float]]], ids: list[int]) -> dict[str, Any]:
    """The same body as a dict (tests; what the server parses :func:`generate_content` to)."""
    return {"input_embeds": embeds, **generate_options(ids)}


def read_generate(answer: Any, count: int) -> tuple[list[dict[int, float]], int]:
    """Per sequence ``{token id: log-prob}`` at the scored position, and the input tokens
    the server counted. SGLang answers a batch with one object per sequence, whose
    ``meta_info.output_token_ids_logprobs[0]`` lists ``[logprob, token_id, text]``."""
    items = answer if isinstance(answer, list) else [answer]
    if len(items) != count:
        raise ProtocolError(f"/generate answered {len(items)} results for {count} sequences")
    rows: list[dict[int, float]] = []
    tokens = 0
    for item in items:
        meta = item.get("meta_info") if isinstance(item, dict) else None
        per_token = meta.get("output_token_ids_logprobs") if isinstance(meta, dict) else None
        if not isinstance(per_token, list) or not per_token or not per_token[0]:
            raise ProtocolError(
                "/generate answered without output_token_ids_logprobs: the server ignored "
                "token_ids_logprob (SGLang before 0.4.4?)"
            )
        got: dict[int, float] = {}
        for entry in per_token[0]:
            try:
                got[int(entry[1])] = float(entry[0])
            except (TypeError, ValueError, IndexError):
                raise ProtocolError(f"malformed log-prob entry {entry!r}") from None
        rows.append(got)
        assert isinstance(meta, dict)
        tokens += int(meta.get("prompt_tokens") or 0)
    return rows, tokens
