"""vLLM's wire formats as bbt uses them: prompt-embedding tensors, log-prob answers, errors.

Followed: vLLM's OpenAI-compatible server as of the stored snapshot of vllm-project/vllm
(``vllm/entrypoints/openai/completion/protocol.py``, ``chat_completion/protocol.py``,
``engine/protocol.py``, ``chat_utils`` and the ``safe_load_prompt_embeds`` loader), plus
the descriptions of PR #40720 (``prompt_embeds`` chat content parts) and PR #43463
(``logprob_token_ids``). See docs/vllm.md for the list.

* A prompt-embeddings tensor travels as base64 of ``torch.save(tensor)``; vLLM reads it
  back with ``torch.load(..., weights_only=True)`` and accepts float32, bfloat16 and
  float16, shape ``[tokens, hidden]`` (a leading batch dimension of 1 is squeezed).
* Log-probs come back keyed by token; with ``return_tokens_as_token_ids`` the key is
  ``"token_id:<id>"``, which is what bbt asks for, so no token string needs decoding.
* Errors are ``{"error": {"message", "type", "param", "code"}}`` (older servers:
  ``{"object": "error", "message", ...}``; the auth middleware: ``{"error": "Unauthorized"}``).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import SecretStr

from bbt.client.redaction import redact
from bbt.client.transport import error_for_status
from bbt.engines.model import require_torch
from bbt.errors import (
    APIStatusError,
    ProtocolError,
)

WireDType = Literal["float32", "float16", "bfloat16"]
WIRE_DTYPES: tuple[WireDType, ...] = ("float32", "float16", "bfloat16")
#: vLLM's prefix for a token given by id in a log-prob answer (``return_tokens_as_token_ids``).
TOKEN_ID_PREFIX = "token_id:"
_VERSION_RE = re.compile(r"^\s*v?(\d+)\.(\d+)(?:\.(\d+))?")


def encode_embeds(array: np.ndarray[Any, Any], dtype: WireDType = "float32") -> str:
    """base64 of ``torch.save`` of ``array`` ([tokens, hidden]) in ``dtype``: vLLM's format."""
    torch = require_torch()
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor.to(getattr(torch, dtype))
    buf = io.BytesIO()
    torch.save(tensor, buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def decode_embeds(data: str | bytes) -> np.ndarray[Any, np.dtype[np.float32]]:
    """What vLLM does with a ``prompt_embeds`` payload, for the fake and for tests: strict
    base64, ``torch.load(weights_only=True)``, a tensor of an accepted dtype, dense, a
    leading batch of 1 squeezed. Raises ``ValueError`` with vLLM-like wording."""
    torch = require_torch()
    raw = data.encode("ascii") if isinstance(data, str) else data
    try:
        blob = base64.b64decode(raw, validate=True)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"prompt_embeds is not valid base64: {exc}") from None
    try:
        with torch.sparse.check_sparse_tensor_invariants():
            tensor = torch.load(io.BytesIO(blob), weights_only=True, map_location="cpu")
    except Exception as exc:  # torch raises many types for a bad pickle
        raise ValueError(f"prompt_embeds could not be loaded: {type(exc).__name__}") from None
    if not isinstance(tensor, torch.Tensor):
        raise ValueError("`prompt_embeds` payload did not deserialize to a torch.Tensor.")
    if tensor.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"prompt_embeds dtype {tensor.dtype} is not float32/bfloat16/float16")
    tensor = tensor.to_dense()
    if tensor.dim() == 3 and tensor.shape[0] == 1:
        tensor = tensor.squeeze(0)
    if tensor.dim() != 2:
        raise ValueError(
            f"prompt_embeds must be of shape (seq_len, hidden_size); got {list(tensor.shape)}"
        )
    out: np.ndarray[Any, np.dtype[np.float32]] = tensor.to(torch.float32).numpy()
    return out


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) from a version string such as ``0.26.1``, ``0.26.0rc1`` or
    ``0.27.1.dev12+g0abc``; ``None`` when it does not start like a version."""
    m = _VERSION_RE.match(text)
    if m is None:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def token_logprobs(entries: Mapping[str, float] | Sequence[Mapping[str, Any]]) -> dict[int, float]:
    """``{token id: log-prob}`` from one position's log-probs as vLLM returns them: the
    Completions dict ``{"token_id:17": -0.3, ...}`` or the Chat list
    ``[{"token": "token_id:17", "logprob": -0.3, ...}, ...]``."""
    pairs: list[tuple[Any, Any]]
    if isinstance(entries, Mapping):
        pairs = list(entries.items())
    else:
        pairs = [(e.get("token"), e.get("logprob")) for e in entries]
    out: dict[int, float] = {}
    for token, value in pairs:
        if not isinstance(token, str) or not token.startswith(TOKEN_ID_PREFIX):
            raise ProtocolError(
                f"log-prob entry {token!r} is not keyed by token id; the server ignored "
                "return_tokens_as_token_ids"
            )
        try:
            tid = int(token[len(TOKEN_ID_PREFIX) :])
            lp = float(value)
        except (TypeError, ValueError):
            raise ProtocolError(f"malformed log-prob entry {token!r}: {value!r}") from None
        out[tid] = lp
    return out


#: Log-prob margin (nats) below the floor for a candidate the server did not return.
DEFAULT_MISSING_MARGIN = 1.0


def fill_candidates(
    got: Mapping[int, float], candidate_ids: Sequence[int], margin: float = DEFAULT_MISSING_MARGIN
) -> tuple[np.ndarray[Any, np.dtype[np.float32]], int]:
    """Log-probs of ``candidate_ids`` from one position's answer, and how many were missing.

    A candidate the server did not return (top-k fallback on a server without
    ``logprob_token_ids``) is ranked below every returned token, so its probability is at
    most the smallest returned one, and at most the mass the returned tokens leave over.
    It is given the lower of the two bounds minus ``margin`` nats: below all it could be,
    never above a candidate that was returned.
    """
    if not got:
        raise ProtocolError("the server returned no log-probs at the scored position")
    values = np.fromiter(got.values(), dtype=np.float64)
    floor = float(values.min())
    leftover = 1.0 - float(np.exp(values).sum())
    if leftover > 0:
        floor = min(floor, float(np.log(leftover)))
    missing = 0
    out = np.empty(len(candidate_ids), dtype=np.float32)
    for k, cid in enumerate(candidate_ids):
        if cid in got:
            out[k] = got[cid]
        else:
            out[k] = floor - margin
            missing += 1
    return out, missing


def status_error(response: httpx.Response, secret: SecretStr | None) -> APIStatusError:
    """The bbt exception for a vLLM error answer (class from the status, text from the body)."""
    message = response.reason_phrase or "error"
    error_type: str | None = None
    field: str | None = None
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            message = str(err.get("message") or message)
            error_type = str(err["type"]) if err.get("type") else None
            field = str(err["param"]) if err.get("param") else None
        elif isinstance(err, str):
            message = err
        elif "detail" in body:
            message = str(body["detail"])
    elif response.text.strip():
        message = f"{message}: {response.text[:200].strip()}"
    return error_for_status(response, redact(message, secret), error_type=error_type, field=field)
