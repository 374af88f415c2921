"""The wire protocol, version 1: every request and response body, shared by client and server.

Endpoints (all bodies JSON; see docs/protocol.md)::

    GET  /v1/models       -> ModelList          model discovery
    POST /v1/tokenize     TokenizeRequest   -> TokenizeResponse
    POST /v1/embeddings   EmbeddingsRequest -> EmbeddingsResponse
    POST /v1/logits       LogitsRequest     -> LogitsResponse   (the BBT call)
    GET  /healthz         -> Health
    GET  /openapi.json    the OpenAPI document

Every error is an :class:`ErrorEnvelope` with a 4xx status for anything the caller got
wrong, 429 (with ``Retry-After``) when rate-limited, and 5xx only for server faults.
"""

from __future__ import annotations

from enum import Enum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bbt.protocol._tensor import DType, Tensor

#: The newest protocol version this package speaks (v1 plus additive 1.1 to 1.6
#: features; 1.2 pages the prompt registry's list and marks rows it cannot show; 1.3 adds
#: the features operation, :mod:`bbt.protocol.features`; 1.4 shared, read-only prompts,
#: :mod:`bbt.protocol.shared`; 1.5 deep projection sessions,
#: :mod:`bbt.protocol.deep_sessions`; 1.6 the score operation, prompt log-probabilities,
#: :mod:`bbt.protocol.score`).
PROTOCOL_VERSION = "1.6"
#: The original version: what a client that announces nothing (or "1") is answered with.
PROTOCOL_V1 = "1"
#: Sessions, causal models, the prompt registry.
PROTOCOL_V1_1 = "1.1"
#: Versions a server negotiates, oldest first. Within one major version every change is
#: additive: a response field new in version X is declared ``json_schema_extra={"since": X}``
#: and left out of answers to older clients (:func:`bbt.protocol.wire_json`).
SUPPORTED_VERSIONS: tuple[str, ...] = (
    PROTOCOL_V1,
    PROTOCOL_V1_1,
    "1.2",
    "1.3",
    "1.4",
    "1.5",
    PROTOCOL_VERSION,
)
API_PREFIX = "/v1"
#: Header carrying the protocol version on every request and response: the client announces
#: the newest version it speaks, the server answers with the version it used.
PROTOCOL_HEADER = "X-BBT-Protocol"
#: Header echoing a server-assigned request id, for support and logs.
REQUEST_ID_HEADER = "X-Request-ID"
#: Capability name (in :attr:`ModelInfo.capabilities`) of a server that takes deep prompts:
#: a rank-4 ``prompts`` tensor [P, L, n, H] on ``/v1/logits``, one slice per layer (BBTv2).
DEEP_PROMPTS = "deep_prompts"


#: What a served model is. A masked LM (BERT, RoBERTa) is scored at its mask token; a causal
#: LM (GPT-2, Llama) has no mask token and is scored at the token after the text (protocol
#: 1.1). A v1 client rejects "causal_lm" outright, which is right: it could not render for it.
ModelKind = Literal["masked_lm", "causal_lm"]
MODEL_KINDS: tuple[ModelKind, ...] = ("masked_lm", "causal_lm")


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- discovery


class Limits(_Wire):
    """What one request may carry. A client splits larger work across requests."""

    max_prompts_per_request: int = Field(ge=1, description="Largest population P in one call.")
    max_texts_per_request: int = Field(ge=1, description="Largest batch B in one call.")
    max_sequences_per_request: int = Field(
        ge=1, description="Largest P x B in one call (each pair is one forward sequence)."
    )
    max_prompt_tokens: int = Field(ge=0, description="Largest soft prompt length n.")
    max_candidates: int = Field(ge=1, description="Largest number of candidate token ids C.")
    max_text_chars: int = Field(ge=1, description="Longest input text, in characters.")
    max_embedding_ids: int = Field(ge=1, description="Most token ids in one embeddings call.")
    max_body_bytes: int = Field(ge=1, description="Largest request body the server reads.")
    max_prompt_value: float = Field(
        default=1e4,
        gt=0,
        description=(
            "Largest absolute value of a prompt entry. Input embeddings are of order 0.1; "
            "values far beyond push a model's arithmetic to overflow (non-finite logits)."
        ),
    )


class ModelInfo(_Wire):
    """Everything a BBT client needs to know about the served model."""

    id: str = Field(description="Model id to name in requests.")
    kind: ModelKind = Field(
        default="masked_lm",
        description=(
            "masked_lm: logits are read at the mask token, which each text holds once. "
            "causal_lm (since 1.1): there is no mask token; logits are read at the next token "
            "after each text, i.e. at the text's last token."
        ),
    )
    protocol_version: str = PROTOCOL_V1
    hidden_size: int = Field(ge=1, description="H: width of the input embeddings.")
    vocab_size: int = Field(ge=1)
    num_layers: int = Field(ge=1)
    max_sequence_length: int = Field(ge=1, description="Tokens per sequence, soft prompt included.")
    # Optional only so that a causal model can say it has none (null; since 1.1). A masked
    # model always sends both, so v1 clients, which require them, see no change.
    mask_token: str | None = Field(
        default=None,
        description=(
            "Literal text marking the position whose logits are wanted; null for causal_lm."
        ),
    )
    mask_token_id: int | None = Field(default=None, ge=0, description="null for causal_lm.")
    embedding_mean: float = Field(description="Mean of the input embedding table's entries.")
    embedding_std: float = Field(
        gt=0, description="Std of the input embedding table's entries (BBT scales A by it)."
    )
    dtypes: list[DType] = Field(description="Tensor dtypes the server accepts and can return.")
    limits: Limits
    capabilities: list[str] = Field(
        default_factory=list,
        description=(
            "Optional features this server offers, by name (e.g. 'sessions', "
            "'deep_prompts'). A client checks for a feature here before using it; a server "
            "without it refuses with a 4xx; an empty list is a plain v1 server."
        ),
        json_schema_extra={"since": "1.1"},
    )
    layer_std: list[float] | None = Field(
        default=None,
        description=(
            "With 'deep_prompts': one std per layer slice of a deep prompt (num_layers "
            "entries). Entry 0 is the std of the input embedding table (the slice that is "
            "the shallow prompt); entry l >= 1 the std of the hidden states entering "
            "encoder layer l (outliers clipped), so a client can scale each layer's random "
            "projection as BBTv2 does."
        ),
        json_schema_extra={"since": "1.1"},
    )

    @model_validator(mode="after")
    def _mask_matches_kind(self) -> ModelInfo:
        has_mask = (self.mask_token is not None, self.mask_token_id is not None)
        if self.kind == "masked_lm" and not all(has_mask):
            raise ValueError("a masked_lm model needs mask_token and mask_token_id")
        if self.kind == "causal_lm" and any(has_mask):
            raise ValueError("a causal_lm model has no mask token: send null for both fields")
        if self.mask_token == "":
            raise ValueError("mask_token must not be empty")
        return self


class ModelList(_Wire):
    object: Literal["list"] = "list"
    data: list[ModelInfo]


class Health(_Wire):
    status: Literal["ok"] = "ok"
    protocol_version: str = PROTOCOL_V1
    models: list[str]


# --------------------------------------------------------------------------- tokenisation


class TokenizeRequest(_Wire):
    model: str
    texts: list[str] = Field(min_length=1)
    add_special_tokens: bool = Field(
        default=False, description="Include the model's [CLS]/[SEP]-style tokens."
    )


class TokenizeResponse(_Wire):
    model: str
    ids: list[list[int]]
    tokens: list[list[str]] = Field(description="Token strings as in the model's vocabulary.")


# --------------------------------------------------------------------------- embeddings


class EmbeddingsRequest(_Wire):
    model: str
    token_ids: list[int] = Field(min_length=1)
    dtype: DType = "float32"


class EmbeddingsResponse(_Wire):
    model: str
    embeddings: Tensor = Field(description="Input embeddings, shape [len(token_ids), H].")


# --------------------------------------------------------------------------- the BBT call


class Usage(_Wire):
    """What a request cost.

    ``prompts`` is the paper's unit: one candidate prompt evaluated (on however many
    texts the request carried); evaluated on the whole training set it is one API call.
    """

    prompts: int = Field(ge=0, description="Candidate prompts evaluated (P).")
    sequences: int = Field(ge=0, description="Forward sequences run (P x B).")
    tokens: int = Field(ge=0, description="Input tokens processed, soft-prompt tokens included.")


class LogitsRequest(_Wire):
    """Score a population of soft prompts on a batch of texts.

    The server embeds each text, puts the n prompt vectors right after the first special
    token (a causal model without BOS: at the very start), and returns the logits for the
    candidate token ids only: for a masked model at the mask position (each text holds
    ``mask_token`` exactly once), for a causal model at the next token after the text.
    """

    model: str
    prompts: Tensor = Field(
        description=(
            "Soft prompts, shape [P, n, H]; n = 0 sends the texts with no prompt. A server "
            "with the 'deep_prompts' capability also takes [P, L, n, H] (L = num_layers): "
            "slice 0 is the input prompt, slice l >= 1 is added to the hidden states entering "
            "encoder layer l at the prompt positions (zeros there: the shallow prompt)."
        )
    )
    texts: list[str] = Field(
        min_length=1,
        description=(
            "B input texts: each holds the mask token once (masked_lm), or is non-empty and "
            "ends where the scored token would come (causal_lm)."
        ),
    )
    candidate_ids: list[int] = Field(
        min_length=1, description="C vocabulary ids (e.g. the verbalizer words)."
    )
    output_dtype: DType = "float32"


class LogitsResponse(_Wire):
    model: str
    logits: Tensor = Field(
        description="Logits at the mask position (causal: the next token), shape [P, B, C]."
    )
    usage: Usage


# --------------------------------------------------------------------------- errors


class ErrorType(str, Enum):
    """Machine-readable error classes; each maps to one HTTP status family."""

    invalid_request = "invalid_request"  # 400 / 422
    authentication = "authentication"  # 401
    permission = "permission"  # 403
    not_found = "not_found"  # 404
    payload_too_large = "payload_too_large"  # 413
    rate_limit = "rate_limit"  # 429
    server_error = "server_error"  # 500
    unavailable = "unavailable"  # 503
    #: 404 for a projection session that is unknown, expired, evicted or another key's: the
    #: client reopens it from its recipe (since 1.1; a v1 client is told ``not_found``).
    session_not_found = "session_not_found"


#: What a v1 client is told instead of an error type it does not know.
V1_ERROR_TYPES: dict[ErrorType, ErrorType] = {ErrorType.session_not_found: ErrorType.not_found}


class ErrorBody(_Wire):
    type: ErrorType
    message: str
    field: str | None = Field(
        default=None, description="Dotted path of the offending field, when there is one."
    )


class ErrorEnvelope(_Wire):
    error: ErrorBody
