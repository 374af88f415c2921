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
import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import httpx
import numpy as np
from pydantic import SecretStr
from tenacity import RetryCallState

from bbt.client import ClientSettings
from bbt.client.redaction import redact
from bbt.client.request_plans import PlannedRequest
from bbt.client.transport import DEFAULT_ENV_FILE, SyncHTTPCore
from bbt.errors import (
    APIStatusError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
)
from bbt.protocol import ModelInfo, TokenizeResponse
from bbt.vllm import _codec as codec
from bbt.vllm._codec import CHAT_TEMPLATE_PATH, MAX_LOGPROB_TOKEN_IDS, MIN_VLLM_VERSION, Mode
from bbt.vllm._layout import ChatLayout, special_prefix, text_lead
from bbt.vllm._model import FloatArray, load_embedding_table, model_facts, read_config
from bbt.vllm._scale import apply_scale
from bbt.vllm._score import VLLMScore
from bbt.vllm._url import URL_OPTIONS, URL_SCHEME_PREFIX, is_vllm_url, parse_vllm_url
from bbt.vllm._wire import (
    DEFAULT_MISSING_MARGIN,
    WIRE_DTYPES,
    WireDType,
    encode_embeds,
    fill_candidates,
    require_torch,
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

T = TypeVar("T")
#: One request of a logits call: prompt i on texts [b0:b1].
Job = tuple[int, int, int]

#: Top-k log-probs asked for on servers without ``logprob_token_ids``: vLLM's default
#: ``--max-logprobs`` is 20, the most a stock server returns.
DEFAULT_TOP_LOGPROBS = 20
DEFAULT_MAX_CONCURRENCY = 8
#: Sequences per embedding-table Completions request: a paper-scale batch (B=32) in one.
DEFAULT_SEQUENCES_PER_REQUEST = 64


class VLLMService(VLLMScore, SyncHTTPCore):
    """bbt's :class:`~bbt.client.Service` for a vLLM server started with
    ``--enable-prompt-embeds`` (see docs/vllm.md for the full command line).

    Args:
        base_url: the server root, e.g. ``http://gpu:8000`` (a trailing ``/v1`` and the
            ``vllm+`` scheme prefix are accepted). ``None``: ``BBT_BASE_URL``.
        api_key: vLLM's ``--api-key``; ``None``: ``BBT_API_KEY``. Never logged or stored.
        model: the served model id; ``None``: the first one served.
        config: the model's ``config.json`` (or its directory): hidden size, vocabulary.
        embedding_table: the model's input-embedding table [vocab, hidden] (a path to
            ``.npy``/``.safetensors``/``.pt``, or an array): switches to embedding-table
            mode unless ``mode="chat"``, and gives the embedding statistics.
        embedding_key: the name of the table's tensor in a ``.safetensors``/``.pt`` file;
            ``None``: the usual names are tried.
        hidden_size: the model's hidden size; one contradicting the config or the table is
            an error, not an override.
        embedding_std: the embedding table's standard deviation (BBT scales its projection
            by it); overrides the table's and config.json's.
        vocab_size: the vocabulary size; overrides the table's and config.json's.
        embedding_scale: the engine's token-embedding multiplier (``None``: by config.json's
            ``model_type``, sqrt(H) for Gemma, else 1); scales table rows and statistics.
        mode: ``"chat"`` (black-box), ``"completions"`` (needs the table) or ``"auto"``.
        max_concurrency: requests in flight at once.
        top_logprobs: k of the top-k fallback on servers without ``logprob_token_ids``.
        missing_margin: nats below the floor for a verbalizer token the fallback did not
            return (see :func:`bbt.vllm.fill_candidates`).
        dtype: element type of the tensors sent (``float16``/``bfloat16`` halve the bytes).
        check_version: refuse servers older than :data:`MIN_VLLM_VERSION` (if ``/version`` answers).
        settings: URL, key, model, timeouts and retries as resolved :class:`ClientSettings`
            (replaces the arguments above them and the environment).
        transport: replaces the network (``httpx.MockTransport``, bbt.testing's fake).
    """

    _content_type_last = False

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        model: str | None = None,
        *,
        config: str | Path | Mapping[str, Any] | None = None,
        embedding_table: str | Path | np.ndarray[Any, Any] | None = None,
        embedding_key: str | None = None,
        hidden_size: int | None = None,
        embedding_std: float | None = None,
        vocab_size: int | None = None,
        embedding_scale: float | None = None,
        mode: Mode = "auto",
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        sequences_per_request: int = DEFAULT_SEQUENCES_PER_REQUEST,
        top_logprobs: int = DEFAULT_TOP_LOGPROBS,
        missing_margin: float = DEFAULT_MISSING_MARGIN,
        dtype: WireDType = "float32",
        check_version: bool = True,
        timeout: float | None = None,
        max_retries: int | None = None,
        max_retry_wait: float | None = None,
        transport: httpx.BaseTransport | None = None,
        env_file: str | Path | None = DEFAULT_ENV_FILE,
        settings: ClientSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if settings is None:
            settings = ClientSettings(
                env_file=env_file,
                base_url=base_url,
                api_key=api_key,
                model=model,
                timeout=timeout,
                max_retries=max_retries,
                max_retry_wait=max_retry_wait,
            )
        root = settings.require_base_url()
        if is_vllm_url(root):
            root = root[len(URL_SCHEME_PREFIX) :]
        root = root.rstrip("/")
        if root.endswith("/v1"):
            root = root[: -len("/v1")]
        super().__init__(settings, rng=rng)  # checks the key
        # Every scoring request carries a torch.save tensor: fail now, not at the first call,
        # when torch is missing (and pay its import here, not inside a timed request).
        require_torch()
        if mode not in ("auto", "chat", "completions"):
            raise ConfigurationError(
                f"unknown vLLM mode {mode!r}; choose auto, chat or completions"
            )
        if dtype not in WIRE_DTYPES:
            raise ConfigurationError(
                f"dtype must be one of {', '.join(WIRE_DTYPES)}; got {dtype!r}"
            )
        if max_concurrency < 1 or sequences_per_request < 1:
            raise ConfigurationError("max_concurrency and sequences_per_request must be >= 1")
        if not 0 <= top_logprobs <= 1000:
            raise ConfigurationError("top_logprobs must be between 0 and 1000")
        self._root = root
        self._key = settings.api_key
        table: FloatArray | None
        if embedding_table is None:
            table = None
        elif isinstance(embedding_table, np.ndarray):
            table = np.ascontiguousarray(embedding_table, dtype=np.float32)
            if table.ndim != 2:
                raise ConfigurationError("embedding_table must be 2-D [vocab_size, hidden_size]")
        else:
            table = load_embedding_table(embedding_table, embedding_key)
        cfg = (
            dict(config)
            if isinstance(config, Mapping)
            else (read_config(config) if config else None)
        )
        if mode == "completions" and table is None:
            raise ConfigurationError(
                "embedding-table mode (completions) needs the model's input-embedding table"
            )
        self._config = cfg
        self._facts_given = (hidden_size, embedding_std, vocab_size)
        # Checked now, so a mismatch is an error before any request; then scaled as the
        # engine scales token embeddings (Gemma: sqrt(H)), see bbt.vllm._scale.
        self._facts, self._table = apply_scale(
            model_facts(
                config=cfg,
                table=table,
                hidden_size=hidden_size,
                embedding_std=embedding_std,
                vocab_size=vocab_size,
            ),
            table,
            cfg,
            embedding_scale,
        )
        self.mode: Literal["chat", "completions"] = (
            "completions"
            if (mode == "completions" or (mode == "auto" and table is not None))
            else "chat"
        )
        self._per_request = sequences_per_request
        self._top_k = top_logprobs
        self._margin = missing_margin
        self._dtype: WireDType = dtype
        self._check_version = check_version
        self._open_http(root, transport=transport, width=max_concurrency, threads_per_call=True)
        self._info: ModelInfo | None = None
        self._server_version: str | None = None
        self._prefix_ids: list[int] | None = None
        self._layout: ChatLayout | None = None
        self._text_ids: dict[str, list[int]] = {}
        #: Positions whose verbalizer tokens were not all returned (top-k fallback).
        self.fallback_positions = 0
        self._warned_fallback = False

    # ---------------------------------------------------------------- plumbing

    @property
    def base_url(self) -> str:
        return self._root

    @property
    def server_version(self) -> str | None:
        """What ``/version`` said, once :meth:`model_info` ran (``None``: not visible)."""
        return self._server_version

    def __repr__(self) -> str:
        key = "'***'" if self._key is not None else "None"
        return f"VLLMService(base_url={self._root!r}, mode={self.mode!r}, api_key={key})"

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, sequences: int = 0
    ) -> Any:
        """One call through the client core (retries, usage); the JSON answer."""
        content = None if body is None else codec.json_body(body)
        content_type = None if body is None else "application/json"
        request = self._new_request(self._http, method, path, content, content_type, sequences)
        return self._send_request(request, partial(codec.read_json, secret=self._key))

    def _log_retry(self, retry_state: RetryCallState, exc: BaseException | None) -> None:
        # str(exc) is redacted already; the key never reaches a log record.
        logger.warning(
            "vLLM request failed (%s); retrying (attempt %d)",
            redact(str(exc), self._key) if exc else "error",
            retry_state.attempt_number + 1,
        )

    def _map(self, fn: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
        """``fn`` over ``items`` on the core's fan-out: at most ``max_concurrency`` in flight,
        results in order; on a failure the calls not yet started are dropped (an error on
        the first of 640 requests must not send the rest)."""
        return self._fan_out([partial(fn, x) for x in items])

    def _facts_source(self) -> str:
        given = self._facts_given[0] is not None
        return (
            "hidden_size"
            if given
            else ("the embedding table" if self._table is not None else "config.json")
        )

    # ---------------------------------------------------------------- discovery

    def model_info(self) -> ModelInfo:
        if self._info is None:
            self._info = self._discover()
        return self._info

    def _discover(self) -> ModelInfo:
        if self._check_version:
            self._refuse_old_server()
        listing = self._request("GET", "/v1/models")
        cards = listing.get("data") if isinstance(listing, dict) else None
        if not isinstance(cards, list) or not cards:
            raise ProtocolError("/v1/models listed no models")
        wanted = self._settings.model
        card = (
            cards[0] if wanted is None else next((c for c in cards if c.get("id") == wanted), None)
        )
        if card is None:
            served = ", ".join(repr(c.get("id")) for c in cards)
            raise ConfigurationError(f"model {wanted!r} is not served here; served: {served}")
        return codec.model_info(card, self._facts, self.mode, self._per_request)

    def _refuse_old_server(self) -> None:
        try:
            answer = self._request("GET", "/version")
        except NotFoundError:
            logger.info("the server has no /version: its vLLM version cannot be checked")
            return
        text = str(answer.get("version", "")) if isinstance(answer, dict) else ""
        self._server_version = text or None
        codec.check_version(text)

    # ---------------------------------------------------------------- tokens

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        info = self.model_info()
        texts = list(texts)
        if not texts:
            raise InvalidRequestError("need at least one text", field="texts")

        def one(text: str) -> tuple[list[int], list[str]]:
            body = codec.tokenize_body(info.id, text, add_special_tokens)
            return codec.read_tokenize(self._request("POST", "/tokenize", body))

        pairs = self._map(one, texts)
        return TokenizeResponse(
            model=info.id, ids=[p[0] for p in pairs], tokens=[p[1] for p in pairs]
        )

    def embed(self, token_ids: Sequence[int]) -> FloatArray:
        if self._table is None:
            raise ConfigurationError(
                "vLLM does not serve input embeddings: an initial prompt drawn from the "
                "vocabulary (--init vocab/text) needs the model's input-embedding table "
                "(?embeddings=PATH in the vllm+http:// URL); --init zeros needs nothing"
            )
        ids = np.asarray(list(token_ids), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self._table.shape[0]):
            raise InvalidRequestError("token id outside the vocabulary", field="token_ids")
        return self._table[ids].copy()

    def _tokenize_one(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenize([text], add_special_tokens).ids[0]

    def _special_prefix(self) -> list[int]:
        """Ids the tokenizer puts before a text (BOS, where the model has one)."""
        if self._prefix_ids is None:
            self._prefix_ids = special_prefix(self._tokenize_one)
        return self._prefix_ids

    def chat_layout(self) -> ChatLayout:
        """BOS and the text's lead in black-box requests, probed once (bbt.vllm._layout)."""
        if self._layout is None:
            lead, exact = text_lead(self._tokenize_one)
            self._layout = ChatLayout(bool(self._special_prefix()), lead, exact)
        return self._layout

    def _ids_of(self, texts: Sequence[str]) -> list[list[int]]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._text_ids]
        if todo:
            resp = self.tokenize(todo, False)
            for t, ids in zip(todo, resp.ids, strict=True):
                self._text_ids[t] = ids
        return [self._text_ids[t] for t in texts]

    # ---------------------------------------------------------------- scoring

    def logits(
        self,
        prompts: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        ids = [int(i) for i in candidate_ids]

        def one(job: Job) -> None:
            i, b0, b1 = job
            answer = self._request("POST", path, body(job), sequences=b1 - b0)
            if self.mode == "chat":
                entries, prompt_tokens = codec.read_chat(answer)
                rows = [(0, entries)]
            else:
                rows, prompt_tokens = codec.read_completions(answer, b1 - b0)
            for k, row in rows:
                out[i, b0 + k] = self._position_logprobs(row, ids)
            with self._usage_lock:
                self._usage.tokens += prompt_tokens

        try:
            path, jobs, body = self._plan(prompts, texts, ids)  # checked: prompts [P, n, H]
            p_count = len(prompts)
            out = np.empty((p_count, len(texts), len(ids)), dtype=np.float32)
            self._map(one, jobs)
        except APIStatusError as exc:
            mapped = codec.explain(exc, self._root, self._facts, self._facts_source())
            if mapped is exc:
                raise
            raise mapped from None
        with self._usage_lock:
            self._usage.calls += p_count
            self._usage.sequences += p_count * len(texts)
        return out

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
        assert self._table is not None
        prefix = self._special_prefix()
        text_ids = self._ids_of(texts)
        codec.check_sequences(info, prefix, text_ids, arr.shape[1], self._table.shape[0])
        head = self._table[np.asarray(prefix, dtype=np.int64)]
        bodies = [self._table[np.asarray(t, dtype=np.int64)] for t in text_ids]
        jobs = [
            (i, b0, min(b0 + self._per_request, len(texts)))
            for i in range(len(arr))
            for b0 in range(0, len(texts), self._per_request)
        ]

        def body(job: Job) -> dict[str, Any]:
            i, b0, b1 = job
            embeds = [
                encode_embeds(np.concatenate([head, arr[i], bodies[j]], axis=0), self._dtype)
                for j in range(b0, b1)
            ]
            return codec.completions_body(info.id, embeds, ids, self._top_k)

        return jobs, body


def service_from_settings(settings: ClientSettings, **overrides: Any) -> VLLMService:
    """The adapter for ``settings.base_url`` = ``vllm+http://...?options`` (the CLI's way in)."""
    assert settings.base_url is not None
    root, options = parse_vllm_url(settings.base_url)
    options.update(overrides)
    return VLLMService(settings=settings.model_copy(update={"base_url": root}), **options)
