"""A :class:`bbt.client.Service` over a vLLM server's OpenAI-compatible API.

Two ways to score a population of soft prompts ``[P, n, H]`` on texts ``B``:

* **black-box** (default): one Chat Completions request per (prompt, text) pair, whose one
  user message holds a ``prompt_embeds`` part (the soft prompt) followed by the rendered
  text, which vLLM tokenises and embeds itself. With bbt's verbatim chat template
  (:data:`CHAT_TEMPLATE_PATH`) and ``add_special_tokens`` the model sees
  ``BOS? + prompt + text``. ``P x B`` requests per generation, each carrying one prompt.
* **embedding table** (when the model's input-embedding table is given): the adapter embeds
  the texts itself and sends each prompt's B whole sequences ``BOS? + prompt + text`` as a
  list of ``prompt_embeds`` in one Completions request: ``P`` requests per generation
  (more if a request would hold more than ``max_sequences_per_request`` sequences).

Either way ``max_tokens=1``, ``temperature=0`` and ``logprob_token_ids`` (vLLM PR #43463)
return the log-probabilities of exactly the verbalizer tokens at the next position. Log-probs
are logits shifted by a per-row constant (the log-partition), which cross-entropy, hinge and
accuracy over the verbalizer all ignore, so they are returned as the logits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import SecretStr
from typing_extensions import Unpack

from bbt.client import ClientSettings
from bbt.client.request_plans import PlannedRequest
from bbt.engines.model import require_torch
from bbt.engines.service import (
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_SEQUENCES_PER_REQUEST,
    EngineOptions,
    EngineService,
    Job,
)
from bbt.errors import APIStatusError, ConfigurationError, ProtocolError
from bbt.protocol import ModelInfo, TokenizeResponse
from bbt.vllm import _codec as codec
from bbt.vllm._codec import CHAT_TEMPLATE_PATH, MAX_LOGPROB_TOKEN_IDS, MIN_VLLM_VERSION, Mode
from bbt.vllm._layout import ChatLayout, text_lead
from bbt.vllm._model import FloatArray
from bbt.vllm._score import VLLMScore
from bbt.vllm._url import (
    FLOAT_OPTIONS,
    INT_OPTIONS,
    URL_OPTIONS,
    URL_SCHEME_PREFIX,
    is_vllm_url,
    parse_vllm_url,
)
from bbt.vllm._wire import (
    DEFAULT_MISSING_MARGIN,
    WIRE_DTYPES,
    WireDType,
    encode_embeds,
    fill_candidates,
    status_error,
    token_logprobs,
)

__all__ = [
    "CHAT_TEMPLATE_PATH",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_SEQUENCES_PER_REQUEST",
    "DEFAULT_TOP_LOGPROBS",
    "MAX_LOGPROB_TOKEN_IDS",
    "MIN_VLLM_VERSION",
    "URL_OPTIONS",
    "URL_SCHEME_PREFIX",
    "VLLMService",
    "is_vllm_url",
    "parse_vllm_url",
    "service_from_settings",
]

logger = logging.getLogger("bbt.vllm")

#: Top-k log-probs asked for on servers without ``logprob_token_ids``: vLLM's default
#: ``--max-logprobs`` is 20, the most a stock server returns.
DEFAULT_TOP_LOGPROBS = 20


class VLLMService(VLLMScore, EngineService):
    """bbt's :class:`~bbt.client.Service` for a vLLM server started with
    ``--enable-prompt-embeds`` (see docs/vllm.md for the full command line).

    Args:
        base_url: the server root, e.g. ``http://gpu:8000`` (a trailing ``/v1`` and the
            ``vllm+`` scheme prefix are accepted). ``None``: ``BBT_BASE_URL``.
        api_key: vLLM's ``--api-key``; ``None``: ``BBT_API_KEY``. Never logged or stored.
        model: the served model id; ``None``: the first one served.
        mode: ``"chat"`` (black-box), ``"completions"`` (needs the table) or ``"auto"``
            (embedding-table mode when the table is given).
        top_logprobs: k of the top-k fallback on servers without ``logprob_token_ids``.
        missing_margin: nats below the floor for a verbalizer token the fallback did not
            return (see :func:`bbt.vllm.fill_candidates`).
        dtype: element type of the tensors sent (``float16``/``bfloat16`` halve the bytes).
        check_version: refuse servers older than :data:`MIN_VLLM_VERSION` (if ``/version`` answers).
        **options: the model files and facts, fan-out and client settings every engine
            adapter takes (:class:`bbt.engines.EngineOptions`, :class:`bbt.engines.EngineService`):
            ``config`` (``config.json`` or its directory: hidden size, vocabulary),
            ``embedding_table`` (the input-embedding table [vocab, hidden], a path to
            ``.npy``/``.safetensors``/``.pt`` or an array: switches to embedding-table mode
            unless ``mode="chat"``, and gives the embedding statistics), ``embedding_key``,
            ``hidden_size``, ``embedding_std``, ``vocab_size``, ``embedding_scale``,
            ``max_concurrency``, ``sequences_per_request`` (embedding-table mode),
            ``timeout``, ``max_retries``, ``max_retry_wait``, ``transport`` (replaces the
            network: ``httpx.MockTransport``, bbt.testing's fake), ``env_file``,
            ``settings`` and ``rng``.
    """

    engine = "vLLM"
    logger: ClassVar[logging.Logger] = logging.getLogger("bbt.vllm")
    url_prefix = URL_SCHEME_PREFIX
    url_options = URL_OPTIONS
    url_ints = INT_OPTIONS
    url_floats = FLOAT_OPTIONS
    wire_dtypes = WIRE_DTYPES
    strip_v1 = True

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        model: str | None = None,
        *,
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
        missing_margin: float = DEFAULT_MISSING_MARGIN,
        mode: Mode = "auto",
        dtype: WireDType = "float32",
        check_version: bool = True,
        **options: Unpack[EngineOptions],
    ) -> None:
        self._mode_asked = mode
        self._top_k = top_logprobs
        self._margin = missing_margin
        self._check_version = check_version
        super().__init__(base_url, api_key, model, dtype=dtype, **options)
        self._dtype: WireDType = dtype
        self.mode: Literal["chat", "completions"] = (
            "completions"
            if (mode == "completions" or (mode == "auto" and self._table is not None))
            else "chat"
        )
        self._layout: ChatLayout | None = None
        #: Positions whose verbalizer tokens were not all returned (top-k fallback).
        self.fallback_positions = 0
        self._warned_fallback = False

    def _check_options(self) -> None:
        # Every scoring request carries a torch.save tensor: fail now, not at the first call,
        # when torch is missing (and pay its import here, not inside a timed request).
        require_torch()
        if self._mode_asked not in ("auto", "chat", "completions"):
            raise ConfigurationError(
                f"unknown vLLM mode {self._mode_asked!r}; choose auto, chat or completions"
            )
        if not 0 <= self._top_k <= 1000:
            raise ConfigurationError("top_logprobs must be between 0 and 1000")

    def _need_table(self) -> None:
        if self._mode_asked == "completions":
            raise ConfigurationError(
                "embedding-table mode (completions) needs the model's input-embedding table"
            )

    # ---------------------------------------------------------------- plumbing

    def _repr_extra(self) -> str:
        return f", mode={self.mode!r}"

    def _status_error(self, response: Any, secret: SecretStr | None) -> APIStatusError:
        return status_error(response, secret)

    def _facts_source(self) -> str:
        given = self._facts_given[0] is not None
        return (
            "hidden_size"
            if given
            else ("the embedding table" if self._table is not None else "config.json")
        )

    def _explain(self, exc: APIStatusError) -> Exception:
        return codec.explain(exc, self._root, self._facts, self._facts_source())

    # ---------------------------------------------------------------- discovery

    def _model_info_of(self, card: dict[str, Any]) -> ModelInfo:
        return codec.model_info(card, self._facts, self.mode, self._per_request)

    def _read_version(self) -> None:
        if not self._check_version:
            return
        text = self._version_at("/version")
        if text is None:
            logger.info("the server has no /version: its vLLM version cannot be checked")
            return
        codec.check_version(text)

    # ---------------------------------------------------------------- tokens

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        info, texts = self._texts_for(texts)

        def one(text: str) -> tuple[list[int], list[str]]:
            body = codec.tokenize_body(info.id, text, add_special_tokens)
            return codec.read_tokenize(self._request("POST", "/tokenize", body))

        pairs = self._map(one, texts)
        return TokenizeResponse(
            model=info.id, ids=[p[0] for p in pairs], tokens=[p[1] for p in pairs]
        )

    def chat_layout(self) -> ChatLayout:
        """BOS and the text's lead in black-box requests, probed once (bbt.vllm._layout)."""
        if self._layout is None:
            lead, exact = text_lead(self._tokenize_one)
            self._layout = ChatLayout(bool(self._special_prefix()), lead, exact)
        return self._layout

    # ---------------------------------------------------------------- scoring

    def _read_rows(
        self, answer: Any, count: int, ids: list[int]
    ) -> tuple[list[tuple[int, Any]], int]:
        if self.mode == "chat":
            entries, prompt_tokens = codec.read_chat(answer)
            rows = [(0, entries)]
        else:
            rows, prompt_tokens = codec.read_completions(answer, count)
        return [(k, self._position_logprobs(row, ids)) for k, row in rows], prompt_tokens

    def plan_logits_requests(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> list[PlannedRequest]:
        """The requests :meth:`logits` sends for this call, bodies sized byte for byte
        (:class:`bbt.client.request_plans.PlansLogits`: what ``bbt tune --dry-run`` counts)."""
        _, jobs, body = self._plan(prompts, texts, candidate_ids)
        return [
            PlannedRequest(i, i + 1, b0, b1, len(codec.json_body(body((i, b0, b1)))), "float32")
            for i, b0, b1 in jobs
        ]

    def _plan(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> tuple[str, list[Job], Callable[[Job], dict[str, Any]]]:
        """A checked call as its requests: the path, the jobs (prompt i on texts [b0:b1])
        and the body of each, built when it is sent."""
        info = self.model_info()
        arr = np.asarray(prompts, dtype=np.float32)
        text_list = list(texts)
        ids = [int(i) for i in candidate_ids]
        codec.check_job(info, arr, text_list, ids, self.mode)
        if self.mode == "chat":
            layout = self.chat_layout()
            encoded = self._map(lambda i: encode_embeds(arr[i], self._dtype), list(range(len(arr))))
            jobs = [(i, j, j + 1) for i in range(len(arr)) for j in range(len(text_list))]

            def chat(job: Job) -> dict[str, Any]:
                i, j, _ = job
                text = layout.lead + text_list[j]
                return codec.chat_body(info.id, encoded[i], text, ids, self._top_k, layout.bos)

            return "/v1/chat/completions", jobs, chat
        return "/v1/completions", *self._completion_jobs(info, arr, text_list, ids)

    def _position_logprobs(self, entries: Any, ids: list[int]) -> np.ndarray[Any, Any]:
        if entries is None:
            raise ProtocolError("the answer carries no log-probs at the scored position")
        got = token_logprobs(entries)
        row, missing = fill_candidates(got, ids, self._margin)
        if missing:
            with self._usage_lock:
                self.fallback_positions += 1
                warn = not self._warned_fallback
                self._warned_fallback = True
            if warn:
                logger.warning(
                    "the server ignored logprob_token_ids (vLLM before PR #43463?): using its "
                    "top-%d log-probs; a verbalizer token not among them counts as %.1f nats "
                    "below the lowest returned (docs/vllm.md)",
                    self._top_k,
                    self._margin,
                )
        return row

    def _completion_jobs(
        self, info: ModelInfo, arr: FloatArray, texts: list[str], ids: list[int]
    ) -> tuple[list[Job], Callable[[Job], dict[str, Any]]]:
        jobs, sequence = self._table_jobs(info, arr, texts)

        def body(job: Job) -> dict[str, Any]:
            i, b0, b1 = job
            embeds = [encode_embeds(sequence(i, j), self._dtype) for j in range(b0, b1)]
            return codec.completions_body(info.id, embeds, ids, self._top_k)

        return jobs, body


def service_from_settings(settings: ClientSettings, **overrides: Any) -> VLLMService:
    """The adapter for ``settings.base_url`` = ``vllm+http://...?options`` (the CLI's way in)."""
    return VLLMService.from_settings(settings, **overrides)
