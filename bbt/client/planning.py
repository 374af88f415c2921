"""Planning a call's requests: the checks before sending and the split over the server's limits.

No I/O: each ``plan_*`` turns one :class:`~bbt.client.Service` call into the protocol
requests that carry it, checked with the same functions the server runs
(``bbt.protocol.check_*``) so a bad request fails here, before anything is sent, with the
error the server would give. :class:`bbt.Client`, :class:`bbt.AsyncClient` and
:class:`bbt.client.LocalClient` all plan through here, and ``bbt tune --dry-run`` counts
requests with the same functions, so its plan is what a run sends.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypedDict
from urllib.parse import urlencode

import numpy as np
from pydantic import ValidationError
from typing_extensions import Unpack

from bbt.client.transport import UsageStats
from bbt.errors import ConfigurationError, InvalidRequestError, ProtocolError
from bbt.protocol import (
    API_PREFIX,
    DecodedLogitsRequest,
    DType,
    EmbeddingsRequest,
    InitialPromptSpec,
    Limits,
    LogitsRequest,
    LogitsResponse,
    ModelInfo,
    ProjectionSpec,
    PromptCreateRequest,
    PromptList,
    PromptLogitsRequest,
    ProtocolViolation,
    StoredPrompt,
    Tensor,
    TokenizeRequest,
    check_embeddings_request,
    check_json_value,
    check_logits_request,
    check_prompt_create_request,
    check_prompt_logits_request,
    check_text,
    check_tokenize_request,
    encoded_size,
    is_prompt_id,
)

#: Room in a logits body for everything but the prompt tensor (JSON keys, model id, ids).
BODY_SLACK = 4096

WIRE_DTYPES: dict[str, type[np.floating[Any]]] = {"float32": np.float32, "float16": np.float16}

FloatArray = np.ndarray[Any, np.dtype[np.float32]]


class PromptMeta(TypedDict, total=False):
    """What a stored prompt may carry beside its numbers: the keyword arguments of every
    client's ``store_prompt`` (protocol 1.1's prompt registry)."""

    label: str | None
    """A short free-form name (at most the protocol's text limit)."""
    recipe: dict[str, Any] | None
    """Free-form JSON saying how the prompt was made (bounded in bytes and depth)."""


class ProjectedPromptMeta(PromptMeta, total=False):
    """The keyword arguments of ``store_projected_prompt``: :class:`PromptMeta` and p0."""

    p0: InitialPromptSpec | None
    """The initial prompt added to A z (default: zeros)."""


# --------------------------------------------------------------------------- splitting


@dataclass(frozen=True)
class LogitsChunk:
    """One request's share of a P x B job: prompts [p0:p1] on texts [b0:b1]."""

    p0: int
    p1: int
    b0: int
    b1: int
    request: LogitsRequest
    decoded: DecodedLogitsRequest

    @property
    def body(self) -> LogitsRequest:
        return self.request

    @property
    def sequences(self) -> int:
        """Prompt-text pairs the server runs for this request: what its time grows with."""
        return (self.p1 - self.p0) * (self.b1 - self.b0)

    @property
    def rows_sent(self) -> int:
        return self.p1 - self.p0


def _even_bounds(total: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ranges covering ``range(total)``, sizes differing by at most 1."""
    q, r = divmod(total, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + q + (1 if i < r else 0)
        bounds.append((start, end))
        start = end
    return bounds


def plan_grid(
    n_prompts: int,
    n_texts: int,
    limits: Limits,
    *,
    prompt_bytes: int = 0,
    text_bytes: int = 0,
) -> tuple[int, int]:
    """How many prompt groups and text groups to split a P x B job into.

    Picks the split with the fewest requests such that every request respects
    ``max_prompts_per_request``, ``max_texts_per_request``, ``max_sequences_per_request``
    and, given the encoded size of one prompt and an upper bound on one text's,
    ``max_body_bytes``. Ties go to fewer text groups (larger batches per request).
    """
    max_b = min(n_texts, limits.max_texts_per_request, limits.max_sequences_per_request)
    best: tuple[int, int] | None = None
    for b in range(max_b, 0, -1):
        p = min(n_prompts, limits.max_prompts_per_request, limits.max_sequences_per_request // b)
        if prompt_bytes:
            room = limits.max_body_bytes - BODY_SLACK - b * text_bytes
            p = min(p, room // prompt_bytes)
        if p < 1:
            continue
        grid = (math.ceil(n_prompts / p), math.ceil(n_texts / b))
        if best is None or grid[0] * grid[1] < best[0] * best[1]:
            best = grid
    if best is None:
        raise InvalidRequestError(
            f"one prompt of {prompt_bytes} encoded bytes does not fit the server's "
            f"{limits.max_body_bytes}-byte request limit",
            field="prompts",
            error_type="payload_too_large",
        )
    return best


def _shift_field(field: str | None, offset: int) -> str | None:
    """Report a chunk's ``texts.i`` as the caller's index into the whole batch."""
    if field and field.startswith("texts."):
        head, _, rest = field[len("texts.") :].partition(".")
        if head.isdigit():
            return f"texts.{int(head) + offset}" + (f".{rest}" if rest else "")
    return field


def invalid(exc: ProtocolViolation | ValidationError, offset: int = 0) -> InvalidRequestError:
    """The local form of a request the server would reject; raised ``from exc``."""
    if isinstance(exc, ProtocolViolation):
        return InvalidRequestError(
            exc.message, field=_shift_field(exc.field, offset), error_type=exc.error_type.value
        )
    first = exc.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or None
    return InvalidRequestError(first["msg"], field=field)


@contextmanager
def checked(offset: int = 0) -> Iterator[None]:
    """Build and check one request inside: what the server would reject is the caller's
    :class:`~bbt.errors.InvalidRequestError` (a ``texts.i`` field shifted by ``offset``)."""
    try:
        yield
    except ProtocolViolation as exc:
        raise invalid(exc, offset=offset) from exc
    except ValidationError as exc:
        raise invalid(exc) from exc


def plan_logits(
    info: ModelInfo,
    prompts: np.ndarray[Any, Any],
    texts: Sequence[str],
    candidate_ids: Sequence[int],
    dtype: DType = "float32",
    min_requests: int = 1,
) -> list[LogitsChunk]:
    """Split and pre-flight check a logits job; every chunk passes ``check_logits_request``.

    All chunks are built and checked before anything is sent, so a mistake anywhere costs
    no request at all. ``min_requests`` asks for at least that many chunks (fan-out): the
    prompts are split further, never the texts, so each chunk is a whole share of the
    population on the whole batch.
    """
    arr = np.asarray(prompts)
    # Rank 4 is a deep prompt [P, L, n, H]; check_logits_request below refuses it, before
    # anything is sent, when the server does not advertise the capability.
    if arr.ndim not in (3, 4):
        raise InvalidRequestError(
            f"prompts must have shape [P, n, H] (or [P, L, n, H], deep); got shape "
            f"{list(arr.shape)}",
            field="prompts",
        )
    n_prompts = int(arr.shape[0])
    texts = list(texts)
    ids = [int(i) for i in candidate_ids]
    if n_prompts == 0 or not texts or not ids:
        raise InvalidRequestError(
            "need at least one prompt, one text and one candidate id",
            field="prompts" if n_prompts == 0 else "texts" if not texts else "candidate_ids",
        )
    prompt_bytes = encoded_size((1, *arr.shape[1:]), dtype)
    # Upper bound of one text in JSON: quotes, comma, and at most 6 bytes per character
    # (a \uXXXX escape); UTF-8 itself needs at most 4.
    text_bytes = max(6 * len(t) + 3 for t in texts)
    groups_p, groups_b = plan_grid(
        n_prompts, len(texts), info.limits, prompt_bytes=prompt_bytes, text_bytes=text_bytes
    )
    groups_p = max(groups_p, min(n_prompts, math.ceil(min_requests / groups_b)))
    chunks = []
    for p0, p1 in _even_bounds(n_prompts, groups_p):
        try:
            tensor = Tensor.from_numpy(arr[p0:p1], dtype)
        except ValueError as exc:  # e.g. values beyond float16's range
            raise InvalidRequestError(str(exc), field="prompts") from exc
        # What the server will decode, without decoding the base64 we just wrote.
        sent = np.asarray(arr[p0:p1], dtype=WIRE_DTYPES[dtype]).astype(np.float32, copy=False)
        for b0, b1 in _even_bounds(len(texts), groups_b):
            with checked(b0):
                req = LogitsRequest(
                    model=info.id, prompts=tensor, texts=texts[b0:b1], candidate_ids=ids
                )
                decoded = check_logits_request(req, info, prompts=sent)
            chunks.append(LogitsChunk(p0, p1, b0, b1, req, decoded))
    return chunks


def plan_tokenize(
    info: ModelInfo, texts: Sequence[str], add_special_tokens: bool
) -> list[TokenizeRequest]:
    texts = list(texts)
    if not texts:
        raise InvalidRequestError("need at least one text", field="texts")
    size = info.limits.max_texts_per_request
    requests = []
    for start in range(0, len(texts), size):
        with checked(start):
            req = TokenizeRequest(
                model=info.id,
                texts=texts[start : start + size],
                add_special_tokens=add_special_tokens,
            )
            check_tokenize_request(req, info)
        requests.append(req)
    return requests


def plan_embed(info: ModelInfo, token_ids: Sequence[int]) -> list[EmbeddingsRequest]:
    ids = [int(i) for i in token_ids]
    if not ids:
        raise InvalidRequestError("need at least one token id", field="token_ids")
    size = info.limits.max_embedding_ids
    requests = []
    for start in range(0, len(ids), size):
        try:
            req = EmbeddingsRequest(model=info.id, token_ids=ids[start : start + size])
            check_embeddings_request(req, info)
        except ProtocolViolation as exc:
            if exc.field and exc.field.startswith("token_ids."):
                exc.field = f"token_ids.{int(exc.field.split('.')[1]) + start}"
            raise invalid(exc) from exc
        except ValidationError as exc:
            raise invalid(exc) from exc
        requests.append(req)
    return requests


def select_model(models: list[ModelInfo], wanted: str | None) -> ModelInfo:
    """The model named in the settings, or the first one served."""
    if not models:
        raise ConfigurationError("the service serves no models")
    if wanted is None:
        return models[0]
    for info in models:
        if info.id == wanted:
            return info
    served = ", ".join(repr(m.id) for m in models)
    raise ConfigurationError(f"model {wanted!r} is not served here; served: {served}")


def decode_tensor(tensor: Tensor, shape: list[int], what: str) -> FloatArray:
    """A response tensor as float32, after checking it has the shape the request implies."""
    if tensor.shape != shape:
        raise ProtocolError(f"{what} has shape {tensor.shape}; the request implies {shape}")
    try:
        return tensor.to_numpy().astype(np.float32, copy=False)
    except ValueError as exc:
        raise ProtocolError(f"{what} could not be decoded: {exc}") from exc


# --------------------------------------------------------------------------- prompt registry


def prompt_path(prompt_id: str) -> str:
    """The API path of a stored prompt; refuses, before any request, what is no prompt id
    (an id read from a run directory must not steer the request to another route)."""
    if not isinstance(prompt_id, str) or not is_prompt_id(prompt_id):
        raise InvalidRequestError(
            "not a prompt id (ids look like 'bp_' followed by letters, digits, '-' or '_')",
            field="prompt_id",
        )
    return f"{API_PREFIX}/prompts/{prompt_id}"


#: Most pages list_prompts() follows: a server keeps at most max_prompts (1000 by default)
#: per key, so this many pages means a server that hands out cursors without end.
MAX_LIST_PAGES = 10_000


def prompts_page_path(cursor: str | None, page_size: int | None) -> str:
    """``GET /v1/prompts`` for one page (1.2): a server from before pages ignores the query
    and answers every prompt with no ``next_cursor``, which ends the walk."""
    query: dict[str, str] = {}
    if page_size is not None:
        if page_size < 1:
            raise InvalidRequestError("page_size must be at least 1", field="limit")
        query["limit"] = str(page_size)
    if cursor is not None:
        query["cursor"] = cursor
    path = f"{API_PREFIX}/prompts"
    return f"{path}?{urlencode(query)}" if query else path


def next_page(cursor: str | None, seen: set[str]) -> str | None:
    """The cursor to fetch next, or None at the end; ProtocolError for a server that hands
    the same cursor back (following it would never end)."""
    if cursor is None:
        return None
    if cursor in seen or len(seen) >= MAX_LIST_PAGES:
        raise ProtocolError("the server's prompt list does not end (a cursor came back twice)")
    seen.add(cursor)
    return cursor


class PromptPages:
    """The walk over a prompt listing's pages (1.2), without I/O, for every client::

        pages = PromptPages()
        while pages.more():
            yield from pages.take(fetch(pages.cursor))

    The first page is fetched without a cursor, each later one with the cursor the page
    before handed out, until a page hands out none (:func:`next_page` refuses a cursor
    handed out twice).
    """

    def __init__(self) -> None:
        self.cursor: str | None = None
        self._seen: set[str] = set()
        self._started = False

    def more(self) -> bool:
        """Whether there is a page to fetch, at :attr:`cursor`."""
        if self._started:
            self.cursor = next_page(self.cursor, self._seen)
            return self.cursor is not None
        self._started = True
        return True

    def take(self, page: PromptList) -> list[StoredPrompt]:
        """The page's prompts; its cursor is the next one to fetch."""
        self.cursor = page.next_cursor
        return page.data


def check_free_form(label: str | None, recipe: dict[str, Any] | None) -> None:
    """Refuse, before any request, a label or recipe the server could not send back (a lone
    surrogate, NaN, nesting past any server's bound): it would refuse them with a 422, and
    some cannot even be written as the request's JSON."""
    try:
        if recipe is not None:
            check_json_value(recipe, "recipe")
        if label is not None:
            check_text(label, "label")
    except ProtocolViolation as exc:
        raise invalid(exc) from exc


def plan_prompt_store(
    info: ModelInfo, prompt: np.ndarray[Any, Any], **meta: Unpack[PromptMeta]
) -> PromptCreateRequest:
    """A checked store request; the prompt travels as float32, so the server keeps (and
    digests) exactly the bytes the caller holds."""
    label, recipe = meta.get("label"), meta.get("recipe")
    check_free_form(label, recipe)
    arr = np.asarray(prompt)
    try:
        tensor = Tensor.from_numpy(arr, "float32")
        req = PromptCreateRequest(model=info.id, prompt=tensor, label=label, recipe=recipe)
        check_prompt_create_request(req, info)
    except ProtocolViolation as exc:
        raise invalid(exc) from exc
    except ValidationError as exc:
        raise invalid(exc) from exc
    except ValueError as exc:  # from_numpy: a dtype it cannot encode
        raise InvalidRequestError(str(exc), field="prompt") from exc
    return req


def plan_projected_store(
    info: ModelInfo,
    projection: ProjectionSpec,
    z: np.ndarray[Any, Any],
    **meta: Unpack[ProjectedPromptMeta],
) -> PromptCreateRequest:
    """A store request that names the prompt as A z + p0 (z uploads, not the prompt)."""
    label, recipe = meta.get("label"), meta.get("recipe")
    check_free_form(label, recipe)
    arr = np.asarray(z)
    if arr.shape != (projection.dim,):
        raise InvalidRequestError(
            f"z must have shape [{projection.dim}] (the projection's d); got {list(arr.shape)}",
            field="z",
        )
    if not np.isfinite(arr).all():
        raise InvalidRequestError("z contains NaN or infinite values", field="z")
    if projection.hidden_size != info.hidden_size:
        raise InvalidRequestError(
            f"projection hidden_size {projection.hidden_size} does not match the model's "
            f"{info.hidden_size}",
            field="projection.hidden_size",
        )
    try:
        return PromptCreateRequest(
            model=info.id,
            projection=projection,
            z=Tensor.from_numpy(arr, "float32"),
            p0=meta.get("p0"),
            label=label,
            recipe=recipe,
        )
    except ValidationError as exc:
        raise invalid(exc) from exc


@dataclass(frozen=True)
class PromptLogitsChunk:
    """One request's share of a by-id logits job: texts [b0:b1]."""

    b0: int
    b1: int
    request: PromptLogitsRequest


def plan_prompt_logits(
    info: ModelInfo,
    texts: Sequence[str],
    candidate_ids: Sequence[int],
    dtype: DType = "float32",
) -> list[PromptLogitsChunk]:
    """Split a by-id job over the server's limits (texts only: the prompt does not travel)."""
    texts = list(texts)
    ids = [int(i) for i in candidate_ids]
    if not texts or not ids:
        raise InvalidRequestError(
            "need at least one text and one candidate id",
            field="texts" if not texts else "candidate_ids",
        )
    text_bytes = max(6 * len(t) + 3 for t in texts)
    _, groups_b = plan_grid(1, len(texts), info.limits, text_bytes=text_bytes)
    lim = info.limits
    room = max(1, (lim.max_body_bytes - BODY_SLACK) // text_bytes)
    groups_b = max(groups_b, math.ceil(len(texts) / room))
    chunks = []
    for b0, b1 in _even_bounds(len(texts), groups_b):
        with checked(b0):
            req = PromptLogitsRequest(
                model=info.id, texts=texts[b0:b1], candidate_ids=ids, output_dtype=dtype
            )
            check_prompt_logits_request(req, info)
        chunks.append(PromptLogitsChunk(b0, b1, req))
    return chunks


def prompt_logits_into(
    out: FloatArray, chunk: PromptLogitsChunk, resp: LogitsResponse, usage: UsageStats
) -> None:
    """Place one by-id answer (logits [1, b, C]) into ``out`` [B, C]; count its usage."""
    shape = [1, chunk.b1 - chunk.b0, out.shape[1]]
    out[chunk.b0 : chunk.b1] = decode_tensor(resp.logits, shape, "logits")[0]
    usage.sequences += resp.usage.sequences
    usage.tokens += resp.usage.tokens
