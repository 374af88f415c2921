"""The bbt protocol on the client core: what :class:`Client` and :class:`AsyncClient` share.

The two only differ in how they send a request. The wire mechanics (headers, retries,
error mapping, usage) are :mod:`bbt.client.transport`'s, the planning of requests over the
server's limits :mod:`bbt.client.planning`'s; this adds the protocol: its version header,
its URL credentials, and reading its answers into the protocol's models.

A few names that other modules imported from here are kept (see ``__all__``); new code
imports them from the public modules.
"""

from __future__ import annotations

import random
from typing import Protocol, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel, ValidationError

from bbt.client._config import ClientSettings
from bbt.client.planning import (
    BODY_SLACK,
    FloatArray,
    LogitsChunk,
    decode_tensor,
    plan_grid,
    plan_logits,
)
from bbt.client.redaction import redact, redact_url, split_userinfo
from bbt.client.transport import (
    BACKOFF_BASE,
    HTTPCore,
    RawBody,
    is_retryable,
    parse_retry_after,
    status_error,
    transport_error,
)
from bbt.errors import ProtocolError
from bbt.protocol import (
    API_PREFIX,
    PROTOCOL_HEADER,
    PROTOCOL_VERSION,
    REQUEST_ID_HEADER,
    EmbeddingsRequest,
    LogitsResponse,
    ModelInfo,
    Tensor,
    TokenizeRequest,
    TokenizeResponse,
    speaks,
)

M = TypeVar("M", bound=BaseModel)

# Names other modules imported from here before the public modules existed (tests, the
# CLI's dry run, benchmarks); new code imports them from bbt.client.planning/.redaction/
# .transport.
_BODY_SLACK = BODY_SLACK

__all__ = [
    "BACKOFF_BASE",
    "BaseClient",
    "LogitsChunk",
    "is_retryable",
    "parse_retry_after",
    "plan_grid",
    "plan_logits",
    "redact_url",
    "transport_error",
]


class Chunk(Protocol):
    """Where one logits request's answer goes in the call's ``[P, B, C]`` result (a
    :class:`LogitsChunk`, or a session's chunk)."""

    @property
    def p0(self) -> int: ...
    @property
    def p1(self) -> int: ...
    @property
    def b0(self) -> int: ...
    @property
    def b1(self) -> int: ...
    @property
    def rows_sent(self) -> int: ...


class BaseClient(HTTPCore):
    """The bbt protocol's requests and answers on :class:`HTTPCore`: no I/O."""

    def __init__(self, settings: ClientSettings, *, rng: random.Random | None = None) -> None:
        # Credentials in the URL travel as Basic auth, never as part of a URL that is
        # shown, logged or recorded (base_url, repr, httpx's request log, run directories).
        self._base_url, self._url_auth = split_userinfo(settings.require_base_url())
        super().__init__(settings, rng=rng)
        self._info: ModelInfo | None = None

    @property
    def base_url(self) -> str:
        """The service root, without any ``user:password@`` the configured URL carried
        (those credentials are still sent, as Basic auth)."""
        return self._base_url

    def __repr__(self) -> str:
        key = "'***'" if self._settings.api_key is not None else "None"
        return (
            f"{type(self).__name__}(base_url={redact_url(self._base_url)!r}, "
            f"model={self._settings.model!r}, api_key={key})"
        )

    # ---------------------------------------------------------------- requests

    def _headers(self) -> dict[str, str]:
        return {PROTOCOL_HEADER: PROTOCOL_VERSION, **super()._headers()}

    def _build_request(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        body: BaseModel | RawBody | None,
        sequences: int = 0,
    ) -> httpx.Request:
        if isinstance(body, RawBody):
            return self._new_request(http, method, path, body.content, body.content_type, sequences)
        # Serialise here, not through httpx's json=, so bytes_sent is the real body size.
        content = None if body is None else body.model_dump_json().encode()
        content_type = None if body is None else "application/json"
        return self._new_request(http, method, path, content, content_type, sequences)

    @staticmethod
    def _api(path: str) -> str:
        return f"{API_PREFIX}{path}"

    # ---------------------------------------------------------------- responses

    def _parse(self, response: httpx.Response, model: type[M]) -> M:
        """The answer as ``model``; an error answer raised as :mod:`bbt.errors` says.
        The sender has counted its bytes."""
        if not response.is_success:
            raise status_error(response, self._settings.api_key)
        request_id = response.headers.get(REQUEST_ID_HEADER)
        version = response.headers.get(PROTOCOL_HEADER)
        if not speaks(version):
            raise ProtocolError(
                f"server speaks protocol {version!r}; this client speaks {PROTOCOL_VERSION!r}",
                request_id=request_id,
            )
        try:
            return model.model_validate_json(response.content)
        except ValidationError as exc:
            # A short summary: the full pydantic text can echo megabytes of base64.
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}"
                for e in exc.errors()[:3]
            )
            raise ProtocolError(
                redact(
                    f"response is not a valid {model.__name__}: {detail}", self._settings.api_key
                ),
                request_id=request_id,
            ) from exc

    # ---------------------------------------------------------------- results

    def _logits_into(self, out: FloatArray, chunk: Chunk, resp: LogitsResponse) -> None:
        """Place one chunk's answer at its place in ``out`` [P, B, C]; count its usage."""
        shape = [chunk.rows_sent, chunk.b1 - chunk.b0, out.shape[2]]
        got = decode_tensor(resp.logits, shape, "logits")
        out[chunk.p0 : chunk.p1, chunk.b0 : chunk.b1] = got[: chunk.p1 - chunk.p0]
        self._usage.sequences += resp.usage.sequences
        self._usage.tokens += resp.usage.tokens

    def _tokenize_result(
        self, requests: list[TokenizeRequest], responses: list[TokenizeResponse]
    ) -> TokenizeResponse:
        ids: list[list[int]] = []
        tokens: list[list[str]] = []
        for req, resp in zip(requests, responses, strict=True):
            if len(resp.ids) != len(req.texts) or len(resp.tokens) != len(req.texts):
                raise ProtocolError(
                    f"tokenize answered {len(resp.ids)} id lists and {len(resp.tokens)} token "
                    f"lists for {len(req.texts)} texts"
                )
            ids.extend(resp.ids)
            tokens.extend(resp.tokens)
        return TokenizeResponse(model=requests[0].model, ids=ids, tokens=tokens)

    def _embed_result(
        self, info: ModelInfo, requests: list[EmbeddingsRequest], tensors: list[Tensor]
    ) -> FloatArray:
        parts = [
            decode_tensor(t, [len(req.token_ids), info.hidden_size], "embeddings")
            for req, t in zip(requests, tensors, strict=True)
        ]
        return np.concatenate(parts, axis=0)
