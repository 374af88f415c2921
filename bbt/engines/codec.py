"""What every engine adapter's codec shares: compact JSON bodies, JSON answers, the checks of
a logits job and of the sequences built from an input-embedding table, the ``ModelInfo`` of a
served model card. No I/O.

An engine's own codec (:mod:`bbt.vllm`'s, :mod:`bbt.sglang`'s) adds only what its wire says
differently: body fields, answer shapes, error bodies, limits.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import httpx
import numpy as np
from pydantic import SecretStr

from bbt.engines.model import ModelFacts
from bbt.errors import APIStatusError, ConfigurationError, InvalidRequestError, ProtocolError
from bbt.protocol import Limits, ModelInfo

__all__ = [
    "StatusError",
    "Tokenize",
    "check_job",
    "check_sequences",
    "json_body",
    "model_info",
    "read_json",
    "special_prefix",
]

#: ``tokenize(text, add_special_tokens) -> ids``: one text through the server's tokenizer.
Tokenize = Callable[[str, bool], list[int]]
#: An engine's reading of an error answer as a :mod:`bbt.errors` exception.
StatusError = Callable[[httpx.Response, SecretStr | None], APIStatusError]


def json_body(body: dict[str, Any]) -> bytes:
    """A request body as sent: compact JSON."""
    return json.dumps(body, separators=(",", ":")).encode()


def read_json(response: httpx.Response, secret: SecretStr | None, status_error: StatusError) -> Any:
    """The JSON of an engine's answer; an error answer raised as ``status_error`` reads it."""
    if not response.is_success:
        raise status_error(response, secret)
    try:
        return response.json()
    except ValueError as exc:
        raise ProtocolError(
            f"{response.request.url.path} answered with a body that is not JSON"
        ) from exc


def special_prefix(tokenize: Tokenize, probe: str = "a") -> list[int]:
    """Ids the tokenizer puts before a text (BOS where the model has one): the first ids of
    a tokenization with special tokens that the plain one lacks."""
    plain = tokenize(probe, False)
    full = tokenize(probe, True)
    k = len(full) - len(plain)
    return full[:k] if k > 0 and full[k : k + len(plain)] == plain else []


def model_info(
    card: dict[str, Any],
    facts: ModelFacts,
    per: int,
    max_candidates: int,
    capabilities: Sequence[str] = (),
) -> ModelInfo:
    """bbt's :class:`ModelInfo` of a served causal LM (one ``/v1/models`` card) whose
    requests each carry one prompt on up to ``per`` texts."""
    max_len = int(card.get("max_model_len") or 2048)
    limits = Limits(
        max_prompts_per_request=1,
        max_texts_per_request=per,
        max_sequences_per_request=per,
        max_prompt_tokens=max(1, max_len - 2),
        max_candidates=max_candidates,
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
        capabilities=list(capabilities),
    )


def check_job(
    info: ModelInfo,
    arr: np.ndarray[Any, Any],
    texts: list[str],
    ids: list[int],
    too_many: Callable[[int], str],
) -> None:
    """Refuse, before any request, a logits job the engine cannot score. ``too_many(count)``:
    the message for more candidate ids than ``info.limits.max_candidates``."""
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
        raise InvalidRequestError(too_many(len(ids)), field="candidate_ids")
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
    """Refuse, before any scoring request, embedding-table sequences that are too long or
    whose token ids the table does not hold (it is not the served model's table)."""
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
