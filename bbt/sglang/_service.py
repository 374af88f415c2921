"""A :class:`bbt.client.Service` over an SGLang server's native ``/generate`` API.

SGLang takes an input either as text/token ids or as embeddings, not both, so every
sequence goes as embeddings: ``BOS? + soft prompt + text``, built from the model's
input-embedding table (scaled as the engine scales token embeddings, see
:func:`bbt.engines.apply_scale`) and ``/tokenize``. One ``/generate`` request carries one
prompt on up to ``sequences_per_request`` texts; ``max_new_tokens: 1``, greedy, and
``token_ids_logprob`` return the verbalizer tokens' log-probs at the next position (logits
shifted by a per-row constant, which bbt's losses and accuracy ignore). The server must run
with ``--disable-radix-cache`` (SGLang refuses ``input_embeds`` otherwise); docs/sglang.md.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import httpx
import numpy as np
from pydantic import SecretStr

from bbt.client import ClientSettings
from bbt.client.request_plans import PlannedRequest
from bbt.engines.service import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_SEQUENCES_PER_REQUEST,
    EngineService,
    Job,
)
from bbt.errors import APIStatusError, ConfigurationError, ProtocolError
from bbt.protocol import ModelInfo, TokenizeResponse
from bbt.sglang import _codec as codec
from bbt.sglang._codec import WIRE_DTYPES, WireDType

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_SEQUENCES_PER_REQUEST",
    "SGLangService",
    "service_from_settings",
]

logger = logging.getLogger("bbt.sglang")


class SGLangService(EngineService):
    """bbt's :class:`~bbt.client.Service` for an SGLang server started with
    ``--disable-radix-cache`` (docs/sglang.md has the full command line).

    Args:
        base_url: the server root, e.g. ``http://gpu:30000`` (the ``sglang+`` prefix is
            accepted). ``None``: ``BBT_BASE_URL``.
        api_key: SGLang's ``--api-key``; ``None``: ``BBT_API_KEY``. Never logged or stored.
        model: the served model id; ``None``: the one served.
        dtype: precision of the numbers written (``float16``: about half the bytes).
        **options: the model files and facts, fan-out and client settings every engine
            adapter takes (:class:`bbt.engines.EngineOptions`, :class:`bbt.engines.EngineService`):
            ``embedding_table`` is required (the model's input-embedding table [vocab,
            hidden], a path to ``.npy``/``.safetensors``/``.pt`` or an array: SGLang takes
            the whole input as embeddings); ``config`` (``config.json`` or its directory:
            hidden size, vocabulary, architecture for the embedding scale),
            ``embedding_key``, ``hidden_size``, ``embedding_std``, ``vocab_size``,
            ``embedding_scale``, ``max_concurrency``, ``sequences_per_request`` (texts of one
            prompt per ``/generate`` request), ``timeout``, ``max_retries``,
            ``max_retry_wait``, ``transport`` (replaces the network: ``httpx.MockTransport``,
            bbt.testing's fake), ``env_file``, ``settings`` and ``rng``.
    """

    engine = "SGLang"
    logger: ClassVar[logging.Logger] = logger
    url_prefix = codec.URL_SCHEME_PREFIX
    url_options = codec.URL_OPTIONS
    url_ints = codec.INT_OPTIONS
    url_floats = codec.FLOAT_OPTIONS
    wire_dtypes = WIRE_DTYPES
    _dtype: WireDType

    def _need_table(self) -> None:
        raise ConfigurationError(
            "SGLang takes the whole input as embeddings: give the model's input-embedding "
            "table (embedding_table=PATH, or ?embeddings=PATH in the sglang+http:// URL)"
        )

    def _status_error(self, response: httpx.Response, secret: SecretStr | None) -> APIStatusError:
        return codec.status_error(response, secret)

    def _explain(self, exc: APIStatusError) -> Exception:
        return codec.explain(exc, self._root)

    # ---------------------------------------------------------------- discovery

    def _model_info_of(self, card: dict[str, Any]) -> ModelInfo:
        return codec.model_info(card, self._facts, self._per_request)

    def _read_version(self) -> None:
        text = self._version_at("/server_info", "/get_server_info")  # 2nd: before SGLang 0.5.6
        if text is None:
            logger.info("the server has no /server_info: its SGLang version is not visible")
            return
        parsed = codec.parse_version(text) if text else None
        if parsed is not None and parsed < codec.MIN_SGLANG_VERSION:
            logger.warning(
                "SGLang %s is older than the oldest release bbt was checked against (%s)",
                text,
                ".".join(map(str, codec.MIN_SGLANG_VERSION)),
            )

    # ---------------------------------------------------------------- tokens

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        info, texts = self._texts_for(texts)
        body = codec.tokenize_body(info.id, texts, add_special_tokens)
        ids = codec.read_tokenize(self._request("POST", "/tokenize", body), len(texts))
        # SGLang's /tokenize returns ids only: their decimal text stands for the token.
        return TokenizeResponse(
            model=info.id, ids=ids, tokens=[[str(i) for i in row] for row in ids]
        )

    # ---------------------------------------------------------------- scoring

    def _read_rows(
        self, answer: Any, count: int, ids: list[int]
    ) -> tuple[list[tuple[int, Any]], int]:
        rows, prompt_tokens = codec.read_generate(answer, count)
        out = []
        for k, got in enumerate(rows):
            missing = [c for c in ids if c not in got]
            if missing:
                raise ProtocolError(f"/generate returned no log-prob for token ids {missing[:5]}")
            out.append((k, [got[c] for c in ids]))
        return out, prompt_tokens

    def plan_logits_requests(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> list[PlannedRequest]:
        """The requests :meth:`logits` sends for this call (:class:`bbt.client.request_plans.
        PlansLogits`: what ``bbt tune --dry-run`` counts). A number's text depends on its
        value, so each soft-prompt number is counted at its widest
        (:data:`~bbt.sglang._codec.WIDEST_NUMBER`): the planned bytes bound those sent."""
        arr = np.asarray(prompts, dtype=np.float32)
        _, jobs, body = self._plan(arr, texts, candidate_ids)
        n, h = arr.shape[1], arr.shape[2]
        extra = n * h * codec.WIDEST_NUMBER[self._dtype]
        out = []
        for i, b0, b1 in jobs:
            # The prompt's numbers as they are now, swapped for the widest ones.
            now = codec.number_chars(arr[i], self._dtype)
            size = len(body((i, b0, b1))) + (b1 - b0) * (extra - now)
            out.append(PlannedRequest(i, i + 1, b0, b1, size, "float32"))
        return out

    def _plan(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> tuple[str, list[Job], Callable[[Job], bytes]]:
        """A checked call as its requests: the jobs (prompt i on texts [b0:b1]) and the
        body of each, built when it is sent."""
        info = self.model_info()
        arr = np.asarray(prompts, dtype=np.float32)
        text_list = list(texts)
        ids = [int(i) for i in candidate_ids]
        codec.check_job(info, arr, text_list, ids)
        jobs, sequence = self._table_jobs(info, arr, text_list)

        def body(job: Job) -> bytes:
            i, b0, b1 = job
            embeds = [codec.rows_text(sequence(i, j), self._dtype) for j in range(b0, b1)]
            return codec.generate_content(embeds, ids)

        return "/generate", jobs, body


def service_from_settings(settings: ClientSettings, **overrides: Any) -> SGLangService:
    """The adapter for ``settings.base_url`` = ``sglang+http://...?options`` (the CLI's way)."""
    return SGLangService.from_settings(settings, **overrides)
