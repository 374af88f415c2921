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

from bbt.client.engine_urls import split_engine_url
from bbt.client.failures import error_for_status
from bbt.client.redaction import redact
from bbt.errors import (
    APIStatusError,
    ConfigurationError,
    InvalidRequestError,
    ProtocolError,
)
from bbt.protocol import Limits, ModelInfo
from bbt.vllm import ModelFacts

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
    "config": "config",
    "embeddings": "embedding_table",
    "embedding_key": "embedding_key",
    "hidden_size": "hidden_size",
    "embedding_std": "embedding_std",
    "vocab_size": "vocab_size",
    "embedding_scale": "embedding_scale",
    "concurrency": "max_concurrency",
    "per_request": "sequences_per_request",
    "dtype": "dtype",
}
_INTS = frozenset({"hidden_size", "vocab_size", "max_concurrency", "sequences_per_request"})
_FLOATS = frozenset({"embedding_std", "embedding_scale"})


def is_sglang_url(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith(URL_SCHEME_PREFIX)


def parse_sglang_url(url: str) -> tuple[str, dict[str, Any]]:
    """``sglang+http://host:30000?config=PATH&embeddings=PATH`` -> (``http://host:30000``,
    keyword arguments for :class:`~bbt.sglang.SGLangService`)."""
    return split_engine_url(
        url, URL_SCHEME_PREFIX, URL_OPTIONS, ints=_INTS, floats=_FLOATS, engine="SGLang"
    )


def parse_version(text: str) -> tuple[int, ...] | None:
    """``"0.5.23"`` / ``"v0.4.6.post1"`` -> ``(0, 5, 23)``; ``None`` when not a version."""
    parts = text.strip().lstrip("v").split(".")[:3]
    digits = ["".join(ch for ch in p if ch.isdigit()) for p in parts]
    if not digits or not all(digits):
        return None
    return tuple(int(d) for d in digits)


# --------------------------------------------------------------------------- wire


def json_body(body: dict[str, Any]) -> bytes:
    """A request body as sent: compact JSON."""
    return json.dumps(body, separators=(",", ":")).encode()


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


def read_json(response: httpx.Response, secret: SecretStr | None) -> Any:
    """The JSON of an SGLang answer; an error answer raised as :mod:`bbt.errors` says."""
    if not response.is_success:
        raise status_error(response, secret)
    try:
        return response.json()
    except ValueError as exc:
        raise ProtocolError(
            f"{response.request.url.path} answered with a body that is not JSON"
        ) from exc


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
    max_len = int(card.get("max_model_len") or 2048)
    limits = Limits(
        max_prompts_per_request=1,
        max_texts_per_request=per,
        max_sequences_per_request=per,
        max_prompt_tokens=max(1, max_len - 2),
        max_candidates=max(1, min(facts.vocab_size, 4096)),
        max_text_chars=max(1, max_len * 16),
        max_embedding_ids=facts.vocab_size,
        max_body_bytes=2**31 - 1,
    )
    return ModelInfo(
        id=str(card["id"]),
        kind="causal_lm",
        hidden_size=facts.hidden_size,
        vocab_size=facts.vocab_size,
        num_layers=facts.num_layers,
        max_sequence_length=max_len,
        mask_token=None,
        mask_token_id=None,
        embedding_mean=facts.embedding_mean,
        embedding_std=facts.embedding_std,
        dtypes=["float32", "float16"],
        limits=limits,
    )


def check_job(info: ModelInfo, arr: np.ndarray[Any, Any], texts: list[str], ids: list[int]) -> None:
    """Refuse, before any request, a logits job SGLang cannot score."""
    if arr.ndim != 3:
        raise InvalidRequestError(
            f"prompts must have shape [P, n, H]; got shape {list(arr.shape)}", field="prompts"
        )
    if arr.shape[0] == 0 or not texts or not ids:
        raise InvalidRequestError("need at least one prompt, one text and one candidate id")
    if arr.shape[2] != info.hidden_size:
        raise InvalidRequestError(
            f"prompts have hidden size {arr.shape[2]}; the model's is {info.hidden_size}",
            field="prompts",
        )
    if not np.isfinite(arr).all():
        raise InvalidRequestError("prompts hold NaN or infinite values", field="prompts")
    if len(ids) > info.limits.max_candidates:
        raise InvalidRequestError(
            f"{len(ids)} candidate ids; at most {info.limits.max_candidates}",
            field="candidate_ids",
        )
    if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= info.vocab_size:
        raise InvalidRequestError(
            "candidate ids must be distinct vocabulary ids", field="candidate_ids"
        )
    for j, t in enumerate(texts):
        if not t:
            raise InvalidRequestError(
                "a causal LM is scored after the text: empty text", field=f"texts.{j}"
            )


def check_sequences(
    info: ModelInfo, prefix: list[int], text_ids: list[list[int]], n: int, table_rows: int
) -> None:
    """Refuse sequences too long for the server, or ids the table does not hold."""
    for j, tids in enumerate(text_ids):
        length = len(prefix) + n + len(tids) + 1
        if length > info.max_sequence_length:
            raise InvalidRequestError(
                f"text {j} needs {length} tokens with the prompt and the scored token; the "
                f"server takes {info.max_sequence_length}",
                field=f"texts.{j}",
            )
    for tids in [prefix, *text_ids]:
        if tids and max(tids) >= table_rows:
            raise ConfigurationError(
                f"the server's tokenizer gave token id {max(tids)}, but the embedding table "
                f"has {table_rows} rows: it is not the served model's input-embedding table"
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
