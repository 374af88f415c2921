"""The skeleton every engine adapter shares: a :class:`bbt.client.Service` over an inference
engine's HTTP API, on the client core (:class:`bbt.client.transport.SyncHTTPCore`: headers,
retries, usage, fan-out).

:class:`EngineService` resolves the settings and the ``ENGINE+http://`` URL, loads the model's
facts and input-embedding table (scaled as the engine scales token embeddings), finds the
served model, tokenizes, embeds, builds ``BOS? + soft prompt + text`` sequences from the
table, fans a logits call out as requests and counts its usage. An engine
(:class:`bbt.vllm.VLLMService`, :class:`bbt.sglang.SGLangService`) adds its codec: the body
of each request (:meth:`EngineService._plan`), how an answer reads
(:meth:`EngineService._read_rows`), its version check, its error hints and its limits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, ClassVar, TypedDict, TypeVar

import httpx
import numpy as np
from pydantic import SecretStr
from tenacity import RetryCallState
from typing_extensions import Self, Unpack

from bbt.client import ClientSettings
from bbt.client.engine_urls import split_engine_url
from bbt.client.redaction import redact
from bbt.client.transport import DEFAULT_ENV_FILE, SyncHTTPCore
from bbt.engines import codec
from bbt.engines.model import FloatArray, load_embedding_table, model_facts, read_config
from bbt.engines.scale import apply_scale
from bbt.errors import (
    APIStatusError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
)
from bbt.protocol import ModelInfo, TokenizeResponse

__all__ = [
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_SEQUENCES_PER_REQUEST",
    "EngineOptions",
    "EngineService",
    "Job",
    "Plan",
]

T = TypeVar("T")
#: One request of a logits call: prompt i on texts [b0:b1].
Job = tuple[int, int, int]
#: A logits call as requests: the path, the jobs and the body of each (built when sent).
Plan = tuple[str, list[Job], Callable[[Job], "dict[str, Any] | bytes"]]
#: ``sequence(i, j)``: prompt i's sequence ``BOS? + prompt + text j`` as table rows.
Sequences = Callable[[int, int], FloatArray]

DEFAULT_MAX_CONCURRENCY = 8
#: Sequences per request: a paper-scale batch (B=32) in one.
DEFAULT_SEQUENCES_PER_REQUEST = 64


class EngineOptions(TypedDict, total=False):
    """The keyword arguments every engine adapter takes (see :class:`EngineService`)."""

    config: str | Path | Mapping[str, Any] | None
    embedding_table: str | Path | np.ndarray[Any, Any] | None
    embedding_key: str | None
    hidden_size: int | None
    embedding_std: float | None
    vocab_size: int | None
    embedding_scale: float | None
    max_concurrency: int
    sequences_per_request: int
    timeout: float | None
    max_retries: int | None
    max_retry_wait: float | None
    transport: httpx.BaseTransport | None
    env_file: str | Path | None
    settings: ClientSettings | None
    rng: Any


def _table_of(
    value: str | Path | np.ndarray[Any, Any] | None, key: str | None
) -> FloatArray | None:
    """The input-embedding table given as an array or a file (``None``: none given)."""
    if value is None:
        return None
    if not isinstance(value, np.ndarray):
        return load_embedding_table(value, key)
    table = np.ascontiguousarray(value, dtype=np.float32)
    if table.ndim != 2:
        raise ConfigurationError("embedding_table must be 2-D [vocab_size, hidden_size]")
    return table


class EngineService(SyncHTTPCore):
    """bbt's :class:`~bbt.client.Service` over an engine's HTTP API (subclassed per engine).

    Args:
        base_url: the server root (the engine's ``ENGINE+`` URL prefix is accepted).
            ``None``: ``BBT_BASE_URL``.
        api_key: the server's ``--api-key``; ``None``: ``BBT_API_KEY``. Never logged or stored.
        model: the served model id; ``None``: the first one served.
        dtype: the element type of the embeddings sent (one of the engine's wire types).
        **options: the model files and facts, fan-out and client settings
            (:class:`EngineOptions`): ``config`` (the model's ``config.json`` or its directory),
            ``embedding_table`` (the input-embedding table [vocab, hidden]: a path to
            ``.npy``/``.safetensors``/``.pt``, or an array), ``embedding_key`` (the table's
            tensor name in a file), ``hidden_size``, ``embedding_std``, ``vocab_size``
            (explicit facts: a hidden size contradicting the config or the table is an
            error), ``embedding_scale`` (the engine's token-embedding multiplier; ``None``:
            by config.json's ``model_type``), ``max_concurrency`` (requests in flight),
            ``sequences_per_request``, ``timeout``, ``max_retries``, ``max_retry_wait``,
            ``transport`` (replaces the network), ``env_file`` (read for ``BBT_*``
            settings), ``settings`` (resolved :class:`~bbt.client.ClientSettings`, replacing
            the URL, key, model, timeouts and retries) and ``rng`` (retry jitter).
    """

    _content_type_last = False
    #: The engine's name in messages (``"vLLM"``) and its logger.
    engine: ClassVar[str] = "engine"
    logger: ClassVar[logging.Logger] = logging.getLogger("bbt.engines")
    #: The ``--base-url`` scheme prefix that selects the engine, and its URL query options.
    url_prefix: ClassVar[str] = ""
    url_options: ClassVar[Mapping[str, str]] = {}
    url_ints: ClassVar[frozenset[str]] = frozenset()
    url_floats: ClassVar[frozenset[str]] = frozenset({"embedding_std", "embedding_scale"})
    #: Element types the embeddings can be sent in.
    wire_dtypes: ClassVar[tuple[str, ...]] = ("float32",)
    #: Whether a trailing ``/v1`` of the URL is dropped (the adapter writes it itself).
    strip_v1: ClassVar[bool] = False

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | SecretStr | None = None,
        model: str | None = None,
        *,
        dtype: str = "float32",
        **options: Unpack[EngineOptions],
    ) -> None:
        unknown = sorted(set(options) - EngineOptions.__optional_keys__)
        if unknown:  # as Python says of a misspelt keyword: **options must not hide one
            raise TypeError(
                f"{type(self).__name__}() got an unexpected keyword argument {unknown[0]!r}"
            )
        settings = options.get("settings")
        if settings is None:
            settings = ClientSettings(
                env_file=options.get("env_file", DEFAULT_ENV_FILE),
                base_url=base_url,
                api_key=api_key,
                model=model,
                timeout=options.get("timeout"),
                max_retries=options.get("max_retries"),
                max_retry_wait=options.get("max_retry_wait"),
            )
        root = settings.require_base_url()
        if root.lower().startswith(self.url_prefix):
            root = root[len(self.url_prefix) :]
        root = root.rstrip("/")
        if self.strip_v1 and root.endswith("/v1"):
            root = root[: -len("/v1")]
        super().__init__(settings, rng=options.get("rng"))  # checks the key
        self._check_options()
        if dtype not in self.wire_dtypes:
            raise ConfigurationError(
                f"dtype must be one of {', '.join(self.wire_dtypes)}; got {dtype!r}"
            )
        width = options.get("max_concurrency", DEFAULT_MAX_CONCURRENCY)
        per = options.get("sequences_per_request", DEFAULT_SEQUENCES_PER_REQUEST)
        if width < 1 or per < 1:
            raise ConfigurationError("max_concurrency and sequences_per_request must be >= 1")
        self._load_model(options)
        self._root = root
        self._key = settings.api_key
        self._per_request = per
        self._dtype = dtype
        self._open_http(
            root, transport=options.get("transport"), width=width, threads_per_call=True
        )
        self._info: ModelInfo | None = None
        self._server_version: str | None = None
        self._prefix_ids: list[int] | None = None
        self._text_ids: dict[str, list[int]] = {}

    def _check_options(self) -> None:
        """The engine's own checks of its options, before any file is read."""

    def _need_table(self) -> None:
        """Refuse a call without an input-embedding table where the engine needs one."""

    def _load_model(self, options: EngineOptions) -> None:
        """The model's facts and its table, checked now (a mismatch is an error before any
        request), then scaled as the engine scales token embeddings (Gemma: sqrt(H))."""
        given = options.get("embedding_table")
        if given is None:
            self._need_table()
        table = _table_of(given, options.get("embedding_key"))
        config = options.get("config")
        cfg = (
            dict(config)
            if isinstance(config, Mapping)
            else (read_config(config) if config else None)
        )
        self._config = cfg
        given_facts = (
            options.get("hidden_size"),
            options.get("embedding_std"),
            options.get("vocab_size"),
        )
        self._facts_given = given_facts
        hidden, std, vocab = given_facts
        self._facts, self._table = apply_scale(
            model_facts(
                config=cfg, table=table, hidden_size=hidden, embedding_std=std, vocab_size=vocab
            ),
            table,
            cfg,
            options.get("embedding_scale"),
        )

    @classmethod
    def from_settings(cls, settings: ClientSettings, **overrides: Any) -> Self:
        """The adapter for ``settings.base_url`` = ``ENGINE+http://...?options`` (the CLI's
        way in): the URL's options, then ``overrides``."""
        assert settings.base_url is not None
        root, options = cls.parse_url(settings.base_url)
        options.update(overrides)
        return cls(settings=settings.model_copy(update={"base_url": root}), **options)

    @classmethod
    def parse_url(cls, url: str) -> tuple[str, dict[str, Any]]:
        """``ENGINE+http://host:port?name=value`` -> (``http://host:port``, keyword arguments).
        Unknown parameters are an error."""
        return split_engine_url(
            url,
            cls.url_prefix,
            cls.url_options,
            ints=cls.url_ints,
            floats=cls.url_floats,
            engine=cls.engine,
        )

    # ---------------------------------------------------------------- plumbing

    @property
    def base_url(self) -> str:
        return self._root

    @property
    def server_version(self) -> str | None:
        """The version the server said, once :meth:`model_info` ran (``None``: not visible)."""
        return self._server_version

    def _repr_extra(self) -> str:
        return ""

    def __repr__(self) -> str:
        key = "'***'" if self._key is not None else "None"
        name = type(self).__name__
        return f"{name}(base_url={self._root!r}{self._repr_extra()}, api_key={key})"

    def _status_error(self, response: httpx.Response, secret: SecretStr | None) -> APIStatusError:
        raise NotImplementedError

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | bytes | None = None,
        sequences: int = 0,
    ) -> Any:
        """One call through the client core (retries, usage); the JSON answer."""
        content = body if isinstance(body, bytes) or body is None else codec.json_body(body)
        content_type = None if body is None else "application/json"
        request = self._new_request(self._http, method, path, content, content_type, sequences)
        read = partial(codec.read_json, secret=self._key, status_error=self._status_error)
        return self._send_request(request, read)

    def _log_retry(self, retry_state: RetryCallState, exc: BaseException | None) -> None:
        # str(exc) is redacted already; the key never reaches a log record.
        self.logger.warning(
            "%s request failed (%s); retrying (attempt %d)",
            self.engine,
            redact(str(exc), self._key) if exc else "error",
            retry_state.attempt_number + 1,
        )

    def _map(self, fn: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
        """``fn`` over ``items`` on the core's fan-out: at most ``max_concurrency`` in flight,
        results in order; on a failure the calls not yet started are dropped (an error on
        the first of 640 requests must not send the rest)."""
        return self._fan_out([partial(fn, x) for x in items])

    # ---------------------------------------------------------------- discovery

    def model_info(self) -> ModelInfo:
        if self._info is None:
            self._info = self._discover()
        return self._info

    def _discover(self) -> ModelInfo:
        self._read_version()
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
        return self._model_info_of(card)

    def _read_version(self) -> None:
        """Ask the server its version (and refuse one too old), before the model list."""

    def _model_info_of(self, card: dict[str, Any]) -> ModelInfo:
        raise NotImplementedError

    def _version_at(self, *paths: str) -> str | None:
        """The ``version`` the first of ``paths`` that exists answers (kept as
        :attr:`server_version`); ``None`` when none exists."""
        for path in paths:
            try:
                answer = self._request("GET", path)
            except NotFoundError:
                continue
            text = str(answer.get("version", "")) if isinstance(answer, dict) else ""
            self._server_version = text or None
            return text
        return None

    # ---------------------------------------------------------------- tokens

    def _texts_for(self, texts: Sequence[str]) -> tuple[ModelInfo, list[str]]:
        """The model and the texts of a tokenize call (refusing none)."""
        info = self.model_info()
        out = list(texts)
        if not out:
            raise InvalidRequestError("need at least one text", field="texts")
        return info, out

    def embed(self, token_ids: Sequence[int]) -> FloatArray:
        if self._table is None:
            raise ConfigurationError(
                f"{self.engine} does not serve input embeddings: an initial prompt drawn from "
                "the vocabulary (--init vocab/text) needs the model's input-embedding table "
                f"(?embeddings=PATH in the {self.url_prefix}http:// URL); --init zeros needs "
                "nothing"
            )
        ids = np.asarray(list(token_ids), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self._table.shape[0]):
            raise InvalidRequestError("token id outside the vocabulary", field="token_ids")
        return self._table[ids].copy()

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        raise NotImplementedError

    def _tokenize_one(self, text: str, add_special_tokens: bool) -> list[int]:
        return self.tokenize([text], add_special_tokens).ids[0]

    def _special_prefix(self) -> list[int]:
        """Ids the tokenizer puts before a text (BOS, where the model has one)."""
        if self._prefix_ids is None:
            self._prefix_ids = codec.special_prefix(self._tokenize_one)
        return self._prefix_ids

    def _ids_of(self, texts: Sequence[str]) -> list[list[int]]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._text_ids]
        if todo:
            resp = self.tokenize(todo, False)
            for t, ids in zip(todo, resp.ids, strict=True):
                self._text_ids[t] = ids
        return [self._text_ids[t] for t in texts]

    # ---------------------------------------------------------------- scoring

    def logits(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> FloatArray:
        ids = [int(i) for i in candidate_ids]

        def one(job: Job) -> None:
            i, b0, b1 = job
            answer = self._request("POST", path, body(job), sequences=b1 - b0)
            rows, prompt_tokens = self._read_rows(answer, b1 - b0, ids)
            for k, row in rows:
                out[i, b0 + k] = row
            with self._usage_lock:
                self._usage.tokens += prompt_tokens

        try:
            path, jobs, body = self._plan(prompts, texts, ids)  # checked: prompts [P, n, H]
            p_count = len(prompts)
            out = np.empty((p_count, len(texts), len(ids)), dtype=np.float32)
            self._map(one, jobs)
        except APIStatusError as exc:
            mapped = self._explain(exc)
            if mapped is exc:
                raise
            raise mapped from None
        with self._usage_lock:
            self._usage.calls += p_count
            self._usage.sequences += p_count * len(texts)
        return out

    def _plan(
        self, prompts: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> Plan:
        """A checked call as its requests: the path, the jobs (prompt i on texts [b0:b1])
        and the body of each, built when it is sent."""
        raise NotImplementedError

    def _read_rows(
        self, answer: Any, count: int, ids: list[int]
    ) -> tuple[list[tuple[int, Any]], int]:
        """An answer to ``count`` sequences as (sequence index, the candidates' log-probs)
        pairs, and the prompt tokens the server counted."""
        raise NotImplementedError

    def _explain(self, exc: APIStatusError) -> Exception:
        """A misconfigured server's answer as a settings error (else ``exc`` itself)."""
        return exc

    def _table_jobs(
        self, info: ModelInfo, arr: FloatArray, texts: list[str]
    ) -> tuple[list[Job], Sequences]:
        """Jobs of ``sequences_per_request`` texts for each prompt, and the sequences
        ``BOS? + prompt + text`` they send, built from the input-embedding table."""
        table = self._table
        assert table is not None
        prefix = self._special_prefix()
        text_ids = self._ids_of(texts)
        codec.check_sequences(info, prefix, text_ids, arr.shape[1], table.shape[0])
        head = table[np.asarray(prefix, dtype=np.int64)]
        bodies = [table[np.asarray(t, dtype=np.int64)] for t in text_ids]
        jobs = [
            (i, b0, min(b0 + self._per_request, len(texts)))
            for i in range(len(arr))
            for b0 in range(0, len(texts), self._per_request)
        ]

        def sequence(i: int, j: int) -> FloatArray:
            return np.concatenate([head, arr[i], bodies[j]], axis=0)

        return jobs, sequence
