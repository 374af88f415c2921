"""A frozen copy of the protocol-v1 response models as released before 1.1.

Today's v1 clients validate every answer with these (closed: ``extra="forbid"``). The
server must keep answering a client that does not announce 1.1 so that they still parse:
never edit these to make a test pass.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _V1(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Tensor(_V1):
    dtype: Literal["float32", "float16"]
    shape: list[int] = Field(min_length=0, max_length=4)
    data: str


class Limits(_V1):
    max_prompts_per_request: int = Field(ge=1)
    max_texts_per_request: int = Field(ge=1)
    max_sequences_per_request: int = Field(ge=1)
    max_prompt_tokens: int = Field(ge=0)
    max_candidates: int = Field(ge=1)
    max_text_chars: int = Field(ge=1)
    max_embedding_ids: int = Field(ge=1)
    max_body_bytes: int = Field(ge=1)
    max_prompt_value: float = Field(default=1e4, gt=0)


class ModelInfo(_V1):
    id: str
    kind: Literal["masked_lm"] = "masked_lm"
    protocol_version: Literal["1"] = "1"
    hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    max_sequence_length: int = Field(ge=1)
    mask_token: str
    mask_token_id: int = Field(ge=0)
    embedding_mean: float
    embedding_std: float = Field(gt=0)
    dtypes: list[Literal["float32", "float16"]]
    limits: Limits


class ModelList(_V1):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class Health(_V1):
    status: Literal["ok"] = "ok"
    protocol_version: Literal["1"] = "1"
    models: list[str]


class TokenizeResponse(_V1):
    model: str
    ids: list[list[int]]
    tokens: list[list[str]]


class EmbeddingsResponse(_V1):
    model: str
    embeddings: Tensor


class Usage(_V1):
    prompts: int = Field(ge=0)
    sequences: int = Field(ge=0)
    tokens: int = Field(ge=0)


class LogitsResponse(_V1):
    model: str
    logits: Tensor
    usage: Usage


class ErrorType(str, Enum):
    invalid_request = "invalid_request"
    authentication = "authentication"
    permission = "permission"
    not_found = "not_found"
    payload_too_large = "payload_too_large"
    rate_limit = "rate_limit"
    server_error = "server_error"
    unavailable = "unavailable"


class ErrorBody(_V1):
    type: ErrorType
    message: str
    field: str | None = None


class ErrorEnvelope(_V1):
    error: ErrorBody
