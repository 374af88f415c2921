"""Semantic checks of requests against a model's limits, shared by client and server.

The server runs them before any compute (so no input can crash or hang it); the client
runs the same checks before sending, so a mistake costs no request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bbt.protocol._models import (
    DEEP_PROMPTS,
    EmbeddingsRequest,
    ErrorType,
    LogitsRequest,
    ModelInfo,
    TokenizeRequest,
)
from bbt.protocol._tensor import TensorDecodeError


class ProtocolViolation(ValueError):  # noqa: N818 - a violation, not a crash
    """A request that is well-formed JSON but breaks the protocol or the model's limits."""

    def __init__(
        self,
        message: str,
        field: str | None = None,
        error_type: ErrorType = ErrorType.invalid_request,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.error_type = error_type


@dataclass(frozen=True)
class DecodedLogitsRequest:
    prompts: np.ndarray[Any, np.dtype[np.float32]]  # [P, n, H], or [P, L, n, H] (deep)
    texts: list[str]
    candidate_ids: np.ndarray[Any, np.dtype[np.int64]]  # [C]


def check_model(model: str, info: ModelInfo) -> None:
    if model != info.id:
        raise ProtocolViolation(
            f"model {model!r} is not served here; this server serves {info.id!r}",
            field="model",
            error_type=ErrorType.not_found,
        )


def capability_missing(
    model_id: str, lacks: str, capability: str, since: str, needs: str
) -> ProtocolViolation:
    """What a server (or a client, before sending) says when the model lacks an optional
    capability: ``model 'm' <lacks> (no 'cap' capability; it needs protocol <since> and
    <needs>)``, as a 404 on ``model``."""
    return ProtocolViolation(
        f"model {model_id!r} {lacks} (no {capability!r} capability; it needs protocol "
        f"{since} and {needs})",
        field="model",
        error_type=ErrorType.not_found,
    )


def check_dtype(dtype: str, info: ModelInfo, field: str, what: str = "dtype") -> None:
    """A tensor (or answer) element type the model does not list: a violation on ``field``."""
    if dtype not in info.dtypes:
        raise ProtocolViolation(f"{what} {dtype!r} is not supported here", field=field)


def _check_texts(texts: list[str], info: ModelInfo, *, need_mask: bool) -> None:
    limit = info.limits.max_text_chars
    for i, text in enumerate(texts):
        if len(text) > limit:
            raise ProtocolViolation(
                f"text {i} has {len(text)} characters; the limit is {limit}", field=f"texts.{i}"
            )
        if not text.isascii():
            # JSON can carry lone surrogates ("\\ud800") that no tokenizer can encode; refuse
            # them here so they are a 422, never a tokenizer crash (a 500).
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ProtocolViolation(
                    f"text {i} is not valid Unicode (a lone surrogate at character {exc.start})",
                    field=f"texts.{i}",
                ) from None
        if need_mask and info.kind == "causal_lm":
            # No mask token: the score is read at the token after the text, so there must
            # be a text. Any string is valid input otherwise (nothing in it is special).
            if not text:
                raise ProtocolViolation(
                    f"text {i} is empty; a causal model is scored at the token after the text",
                    field=f"texts.{i}",
                )
        elif need_mask and info.mask_token is not None:
            count = text.count(info.mask_token)
            if count != 1:
                raise ProtocolViolation(
                    f"text {i} must contain the mask token {info.mask_token!r} exactly once "
                    f"(found {count})",
                    field=f"texts.{i}",
                )


def _check_ids(ids: list[int], info: ModelInfo, field: str) -> None:
    for i, tid in enumerate(ids):
        if not 0 <= tid < info.vocab_size:
            raise ProtocolViolation(
                f"token id {tid} is outside the vocabulary [0, {info.vocab_size})",
                field=f"{field}.{i}",
            )


def _check_deep(shape: list[int], info: ModelInfo) -> None:
    """A deep prompt [P, L, n, H]: only where served, with one slice per layer."""
    if DEEP_PROMPTS not in info.capabilities:
        raise ProtocolViolation(
            f"prompts of rank 4 are deep prompts [P, L, n, H], which this server does not "
            f"serve (no {DEEP_PROMPTS!r} capability); send [P, n, H]",
            field="prompts.shape",
        )
    if shape[1] != info.num_layers:
        raise ProtocolViolation(
            f"a deep prompt needs one slice per layer: L={shape[1]}, but the model has "
            f"{info.num_layers} layers",
            field="prompts.shape",
        )


def _at_most(count: int, limit: int, what: str, field: str) -> None:
    """A request carrying more ``what`` than one request may: a violation on ``field``."""
    if count > limit:
        raise ProtocolViolation(f"{count} {what}; at most {limit} per request", field=field)


def check_tokenize_request(req: TokenizeRequest, info: ModelInfo) -> None:
    check_model(req.model, info)
    _at_most(len(req.texts), info.limits.max_texts_per_request, "texts", "texts")
    _check_texts(req.texts, info, need_mask=False)


def check_embeddings_request(req: EmbeddingsRequest, info: ModelInfo) -> None:
    check_model(req.model, info)
    _at_most(len(req.token_ids), info.limits.max_embedding_ids, "token ids", "token_ids")
    _check_ids(req.token_ids, info, "token_ids")
    check_dtype(req.dtype, info, "dtype")


def check_logits_request(
    req: LogitsRequest,
    info: ModelInfo,
    *,
    prompts: np.ndarray[Any, Any] | None = None,
) -> DecodedLogitsRequest:
    """Validate ``req`` against ``info`` and decode its tensor; raise ProtocolViolation.

    A client that has just encoded ``req.prompts`` may pass the array it encoded (as the
    server will decode it) as ``prompts``, saving a base64 round trip; its shape must
    match the tensor's.
    """
    check_model(req.model, info)
    lim = info.limits
    t = req.prompts
    check_dtype(t.dtype, info, "prompts.dtype")
    check_dtype(req.output_dtype, info, "output_dtype", "output dtype")
    if len(t.shape) == 4:
        _check_deep(t.shape, info)
    elif len(t.shape) != 3:
        raise ProtocolViolation(
            f"prompts must have shape [P, n, H]; got rank {len(t.shape)}", field="prompts.shape"
        )
    p, n, h = t.shape[0], t.shape[-2], t.shape[-1]
    if h != info.hidden_size:
        raise ProtocolViolation(
            f"prompt width {h} does not match the model's hidden size {info.hidden_size}",
            field="prompts.shape",
        )
    if 1 <= p <= lim.max_prompts_per_request and n > lim.max_prompt_tokens:
        raise ProtocolViolation(
            f"prompt length n={n}; at most {lim.max_prompt_tokens}", field="prompts.shape"
        )
    check_batch(p, req.texts, req.candidate_ids, info)
    if prompts is None:
        try:
            prompts = t.to_numpy()
        except TensorDecodeError as exc:
            raise ProtocolViolation(str(exc), field="prompts.data") from None
    elif list(prompts.shape) != t.shape:
        raise ValueError(f"prompts of shape {prompts.shape} do not match the tensor {t.shape}")
    prompts = prompts.astype(np.float32, copy=False)
    check_prompt_values(prompts, info, "prompts.data")
    return DecodedLogitsRequest(
        prompts=prompts,
        texts=list(req.texts),
        candidate_ids=np.asarray(req.candidate_ids, dtype=np.int64),
    )


def check_batch(
    p: int,
    texts: list[str],
    candidate_ids: list[int],
    info: ModelInfo,
    shape_field: str = "prompts.shape",
) -> None:
    """P prompts on ``texts`` with ``candidate_ids``: within the model's limits?"""
    lim = info.limits
    if not 1 <= p <= lim.max_prompts_per_request:
        raise ProtocolViolation(
            f"population P={p}; must be between 1 and {lim.max_prompts_per_request}",
            field=shape_field,
        )
    b = len(texts)
    _at_most(b, lim.max_texts_per_request, "texts", "texts")
    if p * b > lim.max_sequences_per_request:
        raise ProtocolViolation(
            f"P x B = {p * b} sequences; at most {lim.max_sequences_per_request} per request",
            field="texts",
        )
    if len(candidate_ids) > lim.max_candidates:
        raise ProtocolViolation(
            f"{len(candidate_ids)} candidate ids; at most {lim.max_candidates}",
            field="candidate_ids",
        )
    _check_ids(candidate_ids, info, "candidate_ids")
    _check_texts(texts, info, need_mask=True)


def check_prompt_values(prompts: np.ndarray[Any, Any], info: ModelInfo, field: str) -> None:
    """Prompt entries are finite and within ``max_prompt_value``."""
    if not np.isfinite(prompts).all():
        raise ProtocolViolation("prompts contain NaN or infinite values", field=field)
    largest = float(np.abs(prompts).max(initial=0.0))
    if largest > info.limits.max_prompt_value:
        raise ProtocolViolation(
            f"a prompt entry has absolute value {largest:.3g}; the limit is "
            f"{info.limits.max_prompt_value:.3g}",
            field=field,
        )
