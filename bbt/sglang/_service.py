"""A :class:`bbt.client.Service` over an SGLang server's native ``/generate`` API.

SGLang takes an input either as text/token ids or as embeddings, not both, so every
sequence goes as embeddings: ``BOS? + soft prompt + text``, built from the model's
input-embedding table (scaled as the engine scales token embeddings, see
:func:`bbt.vllm.apply_scale`) and ``/tokenize``. One ``/generate`` request carries one
prompt on up to ``sequences_per_request`` texts; ``max_new_tokens: 1``, greedy, and
``token_ids_logprob`` return the verbalizer tokens' log-probs at the next position (logits
shifted by a per-row constant, which bbt's losses and accuracy ignore). The server must run
with ``--disable-radix-cache`` (SGLang refuses ``input_embeds`` otherwise); docs/sglang.md.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

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
from bbt.sglang import _codec as codec
from bbt.sglang._codec import WIRE_DTYPES, WireDType
from bbt.vllm import apply_scale, load_embedding_table, model_facts, read_config, special_prefix

logger = logging.getLogger("bbt.sglang")

T = TypeVar("T")
#: One request of a logits call: prompt i on texts [b0:b1].
Job = tuple[int, int, int]
FloatArray = np.ndarray[Any, np.dtype[np.float32]]

DEFAULT_MAX_CONCURRENCY = 8
#: Sequences per ``/generate`` request: a paper-scale batch (B=32) in one.
DEFAULT_SEQUENCES_PER_REQUEST = 64


class SGLangService(SyncHTTPCore):
    """bbt's :class:`~bbt.client.Service` for an SGLang server started with
    ``--disable-radix-cache`` (docs/sglang.md has the full command line).

    Args:
        base_url: the server root, e.g. ``http://gpu:30000`` (the ``sglang+`` prefix is
            accepted). ``None``: ``BBT_BASE_URL``.
        api_key: SGLang's ``--api-key``; ``None``: ``BBT_API_KEY``. Never logged or stored.
        model: the served model id; ``None``: the one served.
        config: the model's ``config.json`` (or its directory): hidden size, vocabulary,
            architecture (for the embedding scale).
        embedding_table: the model's input-embedding table [vocab, hidden] (a path to
            ``.npy``/``.safetensors``/``.pt``, or an array). Required: SGLang takes the
            whole input as embeddings.
        embedding_key: the table's tensor name in a ``.safetensors``/``.pt`` file.
        hidden_size: the model's hidden size; one contradicting the config or the table is
            an error, not an override.
        embedding_std: the table's standard deviation (overrides the table's).
        vocab_size: the vocabulary size (overrides the table's and config.json's).
        embedding_scale: the engine's token-embedding multiplier (``None``: by
            config.json's ``model_type``, sqrt(H) for Gemma, else 1).
        max_concurrency: requests in flight at once.
        sequences_per_request: sequences (texts of one prompt) per ``/generate`` request.
        dtype: precision of the numbers written (``float16``: about half the bytes).
        timeout: seconds per request (``None``: the settings' default).
        max_retries: retries of a failed request (``None``: the settings' default).
        max_retry_wait: the longest wait between retries (``None``: the default).
        transport: replaces the network (``httpx.MockTransport``, bbt.testing's fake).
        env_file: the ``.env`` file read for ``BBT_*`` settings (``None``: none).
        settings: URL, key, model, timeouts and retries as resolved
            :class:`~bbt.client.ClientSettings` (replaces the arguments above and the
            environment).
        rng: the random source of retry jitter (tests).
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
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        sequences_per_request: int = DEFAULT_SEQUENCES_PER_REQUEST,
        dtype: WireDType = "float32",
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
        if codec.is_sglang_url(root):
            root = root[len(codec.URL_SCHEME_PREFIX) :]
        root = root.rstrip("/")
        super().__init__(settings, rng=rng)  # checks the key
        if dtype not in WIRE_DTYPES:
            raise ConfigurationError(
                f"dtype must be one of {', '.join(WIRE_DTYPES)}; got {dtype!r}"
            )
        if max_concurrency < 1 or sequences_per_request < 1:
            raise ConfigurationError("max_concurrency and sequences_per_request must be >= 1")
        if embedding_table is None:
            raise ConfigurationError(
                "SGLang takes the whole input as embeddings: give the model's input-embedding "
                "table (embedding_table=PATH, or ?embeddings=PATH in the sglang+http:// URL)"
            )
        if isinstance(embedding_table, np.ndarray):
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
        facts = model_facts(
            config=cfg,
            table=table,
            hidden_size=hidden_size,
            embedding_std=embedding_std,
            vocab_size=vocab_size,
        )
        self._facts, scaled = apply_scale(facts, table, cfg, embedding_scale)
        assert scaled is not None
        self._table: FloatArray = scaled
        self._root = root
        self._key = settings.api_key
        self._concurrency = max_concurrency
        self._per_request = sequences_per_request
        self._dtype: WireDType = dtype
        self._open_http(root, transport=transport, width=max_concurrency, threads_per_call=True)
        self._info: ModelInfo | None = None
        self._server_version: str | None = None
        self._prefix_ids: list[int] | None = None
        self._text_ids: dict[str, list[int]] = {}

    # ---------------------------------------------------------------- plumbing

    @property
    def base_url(self) -> str:
        return self._root

    @property
    def server_version(self) -> str | None:
        """What ``/server_info`` said, once :meth:`model_info` ran (``None``: not visible)."""
        return self._server_version

    def __repr__(self) -> str:
        key = "'***'" if self._key is not None else "None"
        return f"SGLangService(base_url={self._root!r}, api_key={key})"

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
        return self._send_request(request, partial(codec.read_json, secret=self._key))

    def _log_retry(self, retry_state: RetryCallState, exc: BaseException | None) -> None:
        logger.warning(
            "SGLang request failed (%s); retrying (attempt %d)",
            redact(str(exc), self._key) if exc else "error",
            retry_state.attempt_number + 1,
        )

    def _map(self, fn: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
        """``fn`` over ``items`` on the core's fan-out (at most ``max_concurrency`` at once)."""
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
        return codec.model_info(card, self._facts, self._per_request)

    def _read_version(self) -> None:
        answer = None
        for path in ("/server_info", "/get_server_info"):  # the second before SGLang 0.5.6
            try:
                answer = self._request("GET", path)
                break
            except NotFoundError:
                continue
        if answer is None:
            logger.info("the server has no /server_info: its SGLang version is not visible")
            return
        text = str(answer.get("version", "")) if isinstance(answer, dict) else ""
        self._server_version = text or None
        parsed = codec.parse_version(text) if text else None
        if parsed is not None and parsed < codec.MIN_SGLANG_VERSION:
            logger.warning(
                "SGLang %s is older than the oldest release bbt was checked against (%s)",
                text,
                ".".join(map(str, codec.MIN_SGLANG_VERSION)),
            )

    # ---------------------------------------------------------------- tokens

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        info = self.model_info()
        texts = list(texts)
        if not texts:
            raise InvalidRequestError("need at least one text", field="texts")
        body = codec.tokenize_body(info.id, texts, add_special_tokens)
        ids = codec.read_tokenize(self._request("POST", "/tokenize", body), len(texts))
        # SGLang's /tokenize returns ids only: their decimal text stands for the token.
        return TokenizeResponse(
            model=info.id, ids=ids, tokens=[[str(i) for i in row] for row in ids]
        )

    def embed(self, token_ids: Sequence[int]) -> FloatArray:
        ids = np.asarray(list(token_ids), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self._table.shape[0]):
            raise InvalidRequestError("token id outside the vocabulary", field="token_ids")
        return self._table[ids].copy()

    def _special_prefix(self) -> list[int]:
        """Ids the tokenizer puts before a text (BOS, where the model has one)."""
        if self._prefix_ids is None:
            self._prefix_ids = special_prefix(lambda t, s: self.tokenize([t], s).ids[0])
        return self._prefix_ids

    def _ids_of(self, texts: Sequence[str]) -> list[list[int]]:
        todo = [t for t in dict.fromkeys(texts) if t not in self._text_ids]
        if todo:
            for t, ids in zip(todo, self.tokenize(todo, False).ids, strict=True):
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
            answer = self._request("POST", "/generate", body(job), sequences=b1 - b0)
            rows, prompt_tokens = codec.read_generate(answer, b1 - b0)
            for k, got in enumerate(rows):
                missing = [c for c in ids if c not in got]
                if missing:
                    raise ProtocolError(
                        f"/generate returned no log-prob for token ids {missing[:5]}"
                    )
                out[i, b0 + k] = [got[c] for c in ids]
            with self._usage_lock:
                self._usage.tokens += prompt_tokens

        try:
            jobs, body = self._plan(prompts, texts, ids)
            p_count = len(prompts)
            out = np.empty((p_count, len(texts), len(ids)), dtype=np.float32)
            self._map(one, jobs)
        except APIStatusError as exc:
            mapped = codec.explain(exc, self._root)
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
        """The requests :meth:`logits` sends for this call (:class:`bbt.client.request_plans.
        PlansLogits`: what ``bbt tune --dry-run`` counts). A number's text depends on its
        value, so each soft-prompt number is counted at its widest
        (:data:`~bbt.sglang._codec.WIDEST_NUMBER`): the planned bytes bound those sent."""
        arr = np.asarray(prompts, dtype=np.float32)
        jobs, body = self._plan(arr, texts, candidate_ids)
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
    ) -> tuple[list[Job], Callable[[Job], bytes]]:
        """A checked call as its requests: the jobs (prompt i on texts [b0:b1]) and the
        body of each, built when it is sent."""
        info = self.model_info()
        arr = np.asarray(prompts, dtype=np.float32)
        text_list = list(texts)
        ids = [int(i) for i in candidate_ids]
        codec.check_job(info, arr, text_list, ids)
        prefix = self._special_prefix()
        text_ids = self._ids_of(text_list)
        codec.check_sequences(info, prefix, text_ids, arr.shape[1], self._table.shape[0])
        head = self._table[np.asarray(prefix, dtype=np.int64)]
        bodies = [self._table[np.asarray(t, dtype=np.int64)] for t in text_ids]
        jobs = [
            (i, b0, min(b0 + self._per_request, len(text_list)))
            for i in range(len(arr))
            for b0 in range(0, len(text_list), self._per_request)
        ]

        def body(job: Job) -> bytes:
            i, b0, b1 = job
            embeds = [
                codec.rows_text(np.concatenate([head, arr[i], bodies[j]], axis=0), self._dtype)
                for j in range(b0, b1)
            ]
            return codec.generate_content(embeds, ids)

        return jobs, body


def service_from_settings(settings: ClientSettings, **overrides: Any) -> SGLangService:
    """The adapter for ``settings.base_url`` = ``sglang+http://...?options`` (the CLI's way)."""
    assert settings.base_url is not None
    root, options = codec.parse_sglang_url(settings.base_url)
    options.update(overrides)
    return SGLangService(settings=settings.model_copy(update={"base_url": root}), **options)
