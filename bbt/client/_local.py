"""A :class:`Service` over a backend in the same process: no HTTP, same rules.

The tuner and the benchmarks use it to skip the network while keeping everything that
makes results comparable with a remote service: the same pre-flight checks
(``bbt.protocol.check_*``), the same splitting over the model's limits, the same usage
accounting (``requests`` counts backend calls; bytes stay 0) and the same exceptions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np

from bbt.client._base import (
    FloatArray,
    invalid,
    plan_embed,
    plan_logits,
    plan_tokenize,
)
from bbt.client._service import UsageStats
from bbt.errors import BBTError, ProtocolError, ServerError
from bbt.protocol import Health, ModelInfo, ProtocolViolation, TokenizeResponse
from bbt.protocol.backend import Backend

T = TypeVar("T")


class LocalClient:
    """Serve :class:`bbt.client.Service` calls from ``backend`` directly."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        self._usage = UsageStats()

    @property
    def backend(self) -> Backend:
        return self._backend

    @property
    def usage(self) -> UsageStats:
        """Live running totals; take ``usage.copy()`` for a snapshot."""
        return self._usage

    def __repr__(self) -> str:
        return f"LocalClient(backend={type(self._backend).__name__}, model={self._info().id!r})"

    def _info(self) -> ModelInfo:
        return self._backend.info

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        """One backend call, counted, with its failures mapped as the app factory would."""
        self._usage.requests += 1
        try:
            return fn(*args)
        except ProtocolViolation as exc:
            raise invalid(exc) from exc
        except BBTError:
            raise
        except Exception as exc:
            # What a server would answer with a 500: the backend failed, not the caller.
            raise ServerError(
                f"backend failed: {type(exc).__name__}: {exc}",
                status_code=500,
                error_type="server_error",
            ) from exc

    def models(self) -> list[ModelInfo]:
        return [self._info()]

    def model_info(self) -> ModelInfo:
        return self._info()

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        info = self._info()
        ids: list[list[int]] = []
        tokens: list[list[str]] = []
        for req in plan_tokenize(info, texts, add_special_tokens):
            part_ids, part_tokens = self._call(
                self._backend.tokenize, list(req.texts), req.add_special_tokens
            )
            if len(part_ids) != len(req.texts) or len(part_tokens) != len(req.texts):
                raise ProtocolError("backend tokenize returned the wrong number of rows")
            ids.extend(part_ids)
            tokens.extend(part_tokens)
        return TokenizeResponse(model=info.id, ids=ids, tokens=tokens)

    def embed(self, token_ids: Sequence[int]) -> FloatArray:
        info = self._info()
        parts = []
        for req in plan_embed(info, token_ids):
            emb = self._call(self._backend.embed, np.asarray(req.token_ids, dtype=np.int64))
            emb = np.asarray(emb, dtype=np.float32)
            if emb.shape != (len(req.token_ids), info.hidden_size):
                raise ProtocolError(
                    f"backend embeddings have shape {list(emb.shape)}; "
                    f"expected {[len(req.token_ids), info.hidden_size]}"
                )
            parts.append(emb)
        return np.concatenate(parts, axis=0)

    def logits(
        self,
        prompts: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        info = self._info()
        # float32: nothing travels, so nothing is gained by rounding prompts to float16.
        chunks = plan_logits(info, prompts, texts, candidate_ids, "float32")
        n_prompts, n_cand = len(prompts), len(candidate_ids)
        out = np.empty((n_prompts, len(texts), n_cand), dtype=np.float32)
        for chunk in chunks:
            d = chunk.decoded
            logits, usage = self._call(self._backend.logits, d.prompts, d.texts, d.candidate_ids)
            shape = (chunk.p1 - chunk.p0, chunk.b1 - chunk.b0, n_cand)
            logits = np.asarray(logits)
            if logits.shape != shape:
                raise ProtocolError(
                    f"backend logits have shape {list(logits.shape)}; expected {list(shape)}"
                )
            out[chunk.p0 : chunk.p1, chunk.b0 : chunk.b1] = logits
            self._usage.sequences += usage.sequences
            self._usage.tokens += usage.tokens
        self._usage.calls += n_prompts
        return out

    def health(self) -> Health:
        return Health(models=[self._info().id])

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> LocalClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
