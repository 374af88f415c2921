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
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpx
import numpy as np
from pydantic import SecretStr
from tenacity import Retrying, retry_if_exception

from bbt.client._base import (
    USER_AGENT,
    RetryStop,
    RetryWait,
    check_api_key,
    is_retryable,
    redact,
    transport_error,
)
from bbt.client._config import DEFAULT_ENV_FILE, ClientSettings
from bbt.client._service import UsageStats
from bbt.errors import (
    APIStatusError,
    BadRequestError,
    ConfigurationError,
    InvalidRequestError,
    NotFoundError,
    ProtocolError,
)
from bbt.protocol import Limits, ModelInfo, TokenizeResponse
from bbt.vllm._model import FloatArray, ModelFacts, load_embedding_table, model_facts, read_config
from bbt.vllm._wire import (
    DEFAULT_MISSING_MARGIN,
    WIRE_DTYPES,
    WireDType,
    encode_embeds,
    fill_candidates,
    parse_version,
    require_torch,
    status_error,
    token_logprobs,
)

logger = logging.getLogger("bbt.vllm")

#: Oldest vLLM bbt talks to: earlier releases have known prompt-embeds vulnerabilities
#: (crafted tensors crashing or corrupting the engine), and bbt sends tensors on every call.
MIN_VLLM_VERSION = (0, 26, 0)
#: vLLM's limit on ``logprob_token_ids`` (PR #43463): at most this many ids per request.
MAX_LOGPROB_TOKEN_IDS = 128
#: Top-k log-probs asked for on servers without ``logprob_token_ids``: vLLM's default
#: ``--max-logprobs`` is 20, the most a stock server returns.
DEFAULT_TOP_LOGPROBS = 20
DEFAULT_MAX_CONCURRENCY = 8
#: Sequences per embedding-table Completions request: a paper-scale batch (B=32) in one.
DEFAULT_SEQUENCES_PER_REQUEST = 64
#: The URL scheme prefix that selects this adapter in ``bbt tune --base-url``.
URL_SCHEME_PREFIX = "vllm+"
Mode = Literal["auto", "chat", "completions"]
T = TypeVar("T")


def is_vllm_url(url: str | None) -> bool:
    return bool(url) and str(url).lower().startswith(URL_SCHEME_PREFIX)


def _version_text(v: tuple[int, int, int]) -> str:
    return ".".join(str(x) for x in v)


class VLLMService:
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
        mode: ``"chat"`` (black-box), ``"completions"`` (needs the table) or ``"auto"``.
        max_concurrency: requests in flight at once.
        top_logprobs: k of the top-k fallback on servers without ``logprob_token_ids``.
        missing_margin: nats below the floor for a verbalizer token the fallback did not
            return (see :func:`bbt.vllm.fill_candidates`).
        dtype: element type of the tensors sent (``float16``/``bfloat16`` halve the bytes).
        check_version: refuse servers older than :data:`MIN_VLLM_VERSION` (where ``/version``
            answers).
        settings: URL, key, model, timeouts and retries as resolved :class:`ClientSettings`
            (replaces the arguments above them and the environment).
        transport: replaces the network (``httpx.MockTransport``, bbt.testing's fake).
    """

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
        check_api_key(settings.api_key)
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
        self._settings = settings
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
        self._table = table
        self._config = cfg
        self._facts_given = (hidden_size, embedding_std, vocab_size)
        # Checked now, so a mismatch is an error before any request.
        self._facts: ModelFacts = model_facts(
            config=cfg,
            table=table,
            hidden_size=hidden_size,
            embedding_std=embedding_std,
            vocab_size=vocab_size,
        )
        self.mode: Literal["chat", "completions"] = (
            "completions"
            if (mode == "completions" or (mode == "auto" and table is not None))
            else "chat"
        )
        self._concurrency = max_concurrency
        self._per_request = sequences_per_request
        self._top_k = top_logprobs
        self._margin = missing_margin
        self._dtype: WireDType = dtype
        self._check_version = check_version
        self._usage = UsageStats()
        self._lock = threading.Lock()
        self._wait = RetryWait(settings.max_retry_wait, rng=rng)
        self._http = httpx.Client(
            base_url=root, transport=transport, timeout=settings.http_timeout()
        )
        #: How retries wait; tests replace it to record the waits instead of sleeping.
        self._sleep: Callable[[float], None] = time.sleep
        self._info: ModelInfo | None = None
        self._server_version: str | None = None
        self._prefix_ids: list[int] | None = None
        self._text_ids: dict[str, list[int]] = {}
        #: Positions whose verbalizer tokens were not all returned (top-k fallback).
        self.fallback_positions = 0
        self._warned_fallback = False

    # ---------------------------------------------------------------- plumbing

    @property
    def usage(self) -> UsageStats:
        return self._usage

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

    def _headers(self, body: bool) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if body:
            headers["Content-Type"] = "application/json"
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.get_secret_value()}"
        return headers

    def _request(
        self, method: str, path: str, body: dict[str, Any] | None = None, sequences: int = 0
    ) -> Any:
        """One call with retries (backoff, Retry-After) and usage accounting; the JSON answer."""
        import json

        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        request = self._http.build_request(
            method,
            path,
            content=content,
            headers=self._headers(body is not None),
            timeout=self._settings.http_timeout(sequences),
        )
        retrying = Retrying(
            sleep=lambda s: self._sleep(s),
            stop=RetryStop(self._settings.max_retries, self._settings.max_backpressure_wait),
            retry=retry_if_exception(is_retryable),
            wait=self._wait,
            before_sleep=self._before_retry,
            reraise=True,
        )
        return retrying(self._send_once, request)

    def _send_once(self, request: httpx.Request) -> Any:
        with self._lock:
            self._usage.requests += 1
            self._usage.bytes_sent += len(request.content)
        try:
            response = self._http.send(request)
        except httpx.HTTPError as exc:
            raise transport_error(exc, self._key) from exc
        with self._lock:
            self._usage.bytes_received += response.num_bytes_downloaded or len(response.content)
        if not response.is_success:
            raise status_error(response, self._key)
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolError(
                f"{request.url.path} answered with a body that is not JSON"
            ) from exc

    def _before_retry(self, state: Any) -> None:
        with self._lock:
            self._usage.retries += 1
        exc = state.outcome.exception() if state.outcome else None
        # str(exc) is redacted already; the key never reaches a log record.
        logger.warning(
            "vLLM request failed (%s); retrying (attempt %d)",
            redact(str(exc), self._key) if exc else "error",
            state.attempt_number + 1,
        )

    def _map(self, fn: Callable[[T], Any], items: Sequence[T]) -> list[Any]:
        """``fn`` over ``items`` with at most ``max_concurrency`` in flight, results in order.
        The first failure is raised once the calls in flight have finished; calls not yet
        started are dropped (an error on the first of 640 requests must not send the rest)."""
        if len(items) <= 1 or self._concurrency == 1:
            return [fn(x) for x in items]
        pool = ThreadPoolExecutor(max_workers=min(self._concurrency, len(items)))
        try:
            futures = [pool.submit(fn, x) for x in items]
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _explain(self, exc: APIStatusError) -> Exception:
        """Turn vLLM's answers to a misconfigured server into settings errors that say what
        to change; anything else unchanged."""
        text = exc.message
        if "enable-prompt-embeds" in text or "enable_prompt_embeds" in text:
            return ConfigurationError(
                f"the vLLM server at {self._root} does not accept prompt embeddings: start it "
                "with --enable-prompt-embeds (see docs/vllm.md)"
            )
        if "chat template" in text.lower():
            return ConfigurationError(
                f"the vLLM server at {self._root} has no usable chat template for black-box "
                f"mode ({text}); start it with --chat-template {CHAT_TEMPLATE_PATH} "
                "--chat-template-content-format openai (see docs/vllm.md)"
            )
        if isinstance(exc, BadRequestError) and "hidden" in text.lower():
            return ConfigurationError(
                f"the vLLM server rejected the prompt tensor's shape ({text}): hidden size "
                f"{self._facts.hidden_size} (from {self._facts_source()}) is not the served "
                "model's; give the served model's config.json"
            )
        return exc

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
        max_len = int(card.get("max_model_len") or 2048)
        f = self._facts
        # What one vLLM request carries: one (prompt, text) pair in black-box mode, one
        # prompt on up to sequences_per_request texts in embedding-table mode. The adapter
        # splits jobs itself; these make plans (``bbt tune --dry-run``) count requests right.
        per = 1 if self.mode == "chat" else self._per_request
        limits = Limits(
            max_prompts_per_request=1,
            max_texts_per_request=per,
            max_sequences_per_request=per,
            max_prompt_tokens=max(1, max_len - 2),
            max_candidates=MAX_LOGPROB_TOKEN_IDS,
            max_text_chars=max(1, max_len * 16),
            max_embedding_ids=f.vocab_size,
            max_body_bytes=2**31 - 1,
        )
        return ModelInfo(
            id=str(card["id"]),
            kind="causal_lm",
            hidden_size=f.hidden_size,
            vocab_size=f.vocab_size,
            num_layers=f.num_layers,
            max_sequence_length=max_len,
            mask_token=None,
            mask_token_id=None,
            embedding_mean=f.embedding_mean,
            embedding_std=f.embedding_std,
            dtypes=["float32", "float16"],
            limits=limits,
        )

    def _refuse_old_server(self) -> None:
        try:
            answer = self._request("GET", "/version")
        except NotFoundError:
            logger.info("the server has no /version: its vLLM version cannot be checked")
            return
        text = str(answer.get("version", "")) if isinstance(answer, dict) else ""
        self._server_version = text or None
        parsed = parse_version(text)
        if parsed is None:
            logger.info("vLLM version %r not understood: not checked", text)
            return
        if parsed < MIN_VLLM_VERSION:
            raise ConfigurationError(
                f"the server runs vLLM {text}, older than {_version_text(MIN_VLLM_VERSION)}: "
                "those releases have known prompt-embeds vulnerabilities (a crafted tensor can "
                "crash or corrupt the engine), and bbt sends tensors on every call; upgrade vLLM"
            )

    # ---------------------------------------------------------------- tokens

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        info = self.model_info()
        texts = list(texts)
        if not texts:
            raise InvalidRequestError("need at least one text", field="texts")

        def one(text: str) -> tuple[list[int], list[str]]:
            body = {
                "model": info.id,
                "prompt": text,
                "add_special_tokens": add_special_tokens,
                "return_token_strs": True,
            }
            answer = self._request("POST", "/tokenize", body)
            ids = answer.get("tokens") if isinstance(answer, dict) else None
            if not isinstance(ids, list) or not all(isinstance(i, int) for i in ids):
                raise ProtocolError("/tokenize answered without a list of token ids")
            strs = answer.get("token_strs")
            if not isinstance(strs, list) or len(strs) != len(ids):
                strs = [str(i) for i in ids]
            return ids, [str(s) for s in strs]

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

    def _special_prefix(self) -> list[int]:
        """Ids the tokenizer puts before a text (BOS, where the model has one): the first ids
        of a tokenisation with special tokens that the plain one lacks."""
        if self._prefix_ids is None:
            probe = "a"
            plain = self.tokenize([probe], False).ids[0]
            full = self.tokenize([probe], True).ids[0]
            k = len(full) - len(plain)
            self._prefix_ids = full[:k] if k > 0 and full[k : k + len(plain)] == plain else []
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
        self,
        prompts: np.ndarray[Any, Any],
        texts: Sequence[str],
        candidate_ids: Sequence[int],
    ) -> FloatArray:
        info = self.model_info()
        arr = np.asarray(prompts, dtype=np.float32)
        texts = list(texts)
        ids = [int(i) for i in candidate_ids]
        self._check_job(info, arr, texts, ids)
        p_count = arr.shape[0]
        out = np.empty((p_count, len(texts), len(ids)), dtype=np.float32)
        try:
            if self.mode == "chat":
                self._score_chat(info, arr, texts, ids, out)
            else:
                self._score_completions(info, arr, texts, ids, out)
        except APIStatusError as exc:
            mapped = self._explain(exc)
            if mapped is exc:
                raise
            raise mapped from None
        with self._lock:
            self._usage.calls += p_count
            self._usage.sequences += p_count * len(texts)
        return out

    def _check_job(
        self, info: ModelInfo, arr: FloatArray, texts: list[str], ids: list[int]
    ) -> None:
        if arr.ndim != 3:
            raise InvalidRequestError(
                f"prompts must have shape [P, n, H]; got shape {list(arr.shape)}", field="prompts"
            )
        if arr.shape[0] == 0 or not texts or not ids:
            raise InvalidRequestError("need at least one prompt, one text and one candidate id")
        if arr.shape[2] != info.hidden_size:
            raise InvalidRequestError(
                f"prompts have hidden size {arr.shape[2]}; the model's is {info.hidden_size}",
                field="prompts",
            )
        if arr.shape[1] == 0 and self.mode == "chat":
            raise InvalidRequestError(
                "black-box mode sends the soft prompt as a prompt_embeds part, which cannot be "
                "empty: use n >= 1",
                field="prompts",
            )
        if not np.isfinite(arr).all():
            raise InvalidRequestError("prompts hold NaN or infinite values", field="prompts")
        if len(ids) > MAX_LOGPROB_TOKEN_IDS:
            raise InvalidRequestError(
                f"{len(ids)} candidate ids; vLLM returns log-probs for at most "
                f"{MAX_LOGPROB_TOKEN_IDS} (logprob_token_ids)",
                field="candidate_ids",
            )
        if len(set(ids)) != len(ids) or min(ids) < 0 or max(ids) >= info.vocab_size:
            raise InvalidRequestError(
                "candidate ids must be distinct vocabulary ids", field="candidate_ids"
            )
        for j, t in enumerate(texts):
            if not t:
                raise InvalidRequestError(
                    "a causal LM is scored after the text: empty text", field=f"texts.{j}"
                )

    def _sampling(self, ids: list[int]) -> dict[str, Any]:
        return {
            "max_tokens": 1,
            "temperature": 0,
            "logprob_token_ids": ids,
            # Token ids as keys: no token string to map back (and none that is ambiguous).
            "return_tokens_as_token_ids": True,
        }

    def _position_logprobs(self, entries: Any, ids: list[int]) -> np.ndarray[Any, Any]:
        if entries is None:
            raise ProtocolError("the answer carries no log-probs at the scored position")
        got = token_logprobs(entries)
        row, missing = fill_candidates(got, ids, self._margin)
        if missing:
            with self._lock:
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

    def _score_chat(
        self, info: ModelInfo, arr: FloatArray, texts: list[str], ids: list[int], out: FloatArray
    ) -> None:
        encoded = self._map(lambda i: encode_embeds(arr[i], self._dtype), list(range(len(arr))))

        def one(pair: tuple[int, int]) -> None:
            i, j = pair
            body = {
                "model": info.id,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "prompt_embeds", "data": encoded[i]},
                            {"type": "text", "text": texts[j]},
                        ],
                    }
                ],
                "add_generation_prompt": False,
                # BOS where the tokenizer adds one: bbt's template adds none itself.
                "add_special_tokens": True,
                "logprobs": True,
                "top_logprobs": self._top_k,
                **self._sampling(ids),
            }
            answer = self._request("POST", "/v1/chat/completions", body, sequences=1)
            try:
                content = answer["choices"][0]["logprobs"]["content"]
                entries = content[0]["top_logprobs"]
                prompt_tokens = int(answer.get("usage", {}).get("prompt_tokens", 0))
            except (KeyError, IndexError, TypeError, ValueError):
                raise ProtocolError("chat completion answer without logprobs.content") from None
            out[i, j] = self._position_logprobs(entries, ids)
            with self._lock:
                self._usage.tokens += prompt_tokens

        self._map(one, [(i, j) for i in range(len(arr)) for j in range(len(texts))])

    def _score_completions(
        self, info: ModelInfo, arr: FloatArray, texts: list[str], ids: list[int], out: FloatArray
    ) -> None:
        assert self._table is not None
        prefix = self._special_prefix()
        text_ids = self._ids_of(texts)
        n = arr.shape[1]
        for j, tids in enumerate(text_ids):
            length = len(prefix) + n + len(tids) + 1
            if length > info.max_sequence_length:
                raise InvalidRequestError(
                    f"text {j} needs {length} tokens with the prompt and the scored token; the "
                    f"server takes {info.max_sequence_length}",
                    field=f"texts.{j}",
                )
        rows = self._table.shape[0]
        for tids in [prefix, *text_ids]:
            if tids and max(tids) >= rows:
                raise ConfigurationError(
                    f"the server's tokenizer gave token id {max(tids)}, but the embedding table "
                    f"has {rows} rows: it is not the served model's input-embedding table"
                )
        head = self._table[np.asarray(prefix, dtype=np.int64)]
        bodies = [self._table[np.asarray(t, dtype=np.int64)] for t in text_ids]
        jobs = [
            (i, b0, min(b0 + self._per_request, len(texts)))
            for i in range(len(arr))
            for b0 in range(0, len(texts), self._per_request)
        ]

        def one(job: tuple[int, int, int]) -> None:
            i, b0, b1 = job
            embeds = [
                encode_embeds(np.concatenate([head, arr[i], bodies[j]], axis=0), self._dtype)
                for j in range(b0, b1)
            ]
            body = {
                "model": info.id,
                "prompt_embeds": embeds,
                "logprobs": self._top_k,
                **self._sampling(ids),
            }
            answer = self._request("POST", "/v1/completions", body, sequences=b1 - b0)
            choices = answer.get("choices") if isinstance(answer, dict) else None
            if not isinstance(choices, list) or len(choices) != b1 - b0:
                raise ProtocolError(
                    f"completions answered {len(choices) if isinstance(choices, list) else 0} "
                    f"choices for {b1 - b0} prompts"
                )
            for choice in choices:
                try:
                    k = int(choice["index"])
                    entries = choice["logprobs"]["top_logprobs"][0]
                except (KeyError, IndexError, TypeError, ValueError):
                    raise ProtocolError("completion choice without logprobs.top_logprobs") from None
                if not 0 <= k < b1 - b0:
                    raise ProtocolError(f"completion choice index {k} out of range")
                out[i, b0 + k] = self._position_logprobs(entries, ids)
            with self._lock:
                self._usage.tokens += int(answer.get("usage", {}).get("prompt_tokens", 0))

        self._map(one, jobs)

    # ---------------------------------------------------------------- lifetime

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> VLLMService:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


# --------------------------------------------------------------------------- URL form

#: Query parameters of a ``vllm+http://`` URL and the keyword each sets.
URL_OPTIONS: dict[str, str] = {
    "config": "config",
    "embeddings": "embedding_table",
    "embedding_key": "embedding_key",
    "hidden_size": "hidden_size",
    "embedding_std": "embedding_std",
    "vocab_size": "vocab_size",
    "mode": "mode",
    "concurrency": "max_concurrency",
    "top_logprobs": "top_logprobs",
    "dtype": "dtype",
}
_INT_OPTIONS = {"hidden_size", "vocab_size", "max_concurrency", "top_logprobs"}


def parse_vllm_url(url: str) -> tuple[str, dict[str, Any]]:
    """``vllm+http://host:8000?config=PATH&embeddings=PATH`` -> (``http://host:8000``,
    keyword arguments for :class:`VLLMService`). Unknown parameters are an error."""
    raw = url[len(URL_SCHEME_PREFIX) :] if is_vllm_url(url) else url
    parts = urlsplit(raw)
    options: dict[str, Any] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in URL_OPTIONS:
            known = ", ".join(URL_OPTIONS)
            raise ConfigurationError(f"unknown option {name!r} in the vLLM URL; known: {known}")
        key = URL_OPTIONS[name]
        try:
            if key in _INT_OPTIONS:
                options[key] = int(value)
            elif key == "embedding_std":
                options[key] = float(value)
            else:
                options[key] = value
        except ValueError:
            raise ConfigurationError(
                f"option {name}={value!r} in the vLLM URL is not a number"
            ) from None
    if parts.username or parts.password:
        raise ConfigurationError(
            "the vLLM URL holds credentials: pass the key with --api-key or BBT_API_KEY instead"
        )
    return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), options


def service_from_settings(settings: ClientSettings, **overrides: Any) -> VLLMService:
    """The adapter for ``settings.base_url`` = ``vllm+http://...?options`` (the CLI's way in)."""
    assert settings.base_url is not None
    root, options = parse_vllm_url(settings.base_url)
    options.update(overrides)
    return VLLMService(settings=settings.model_copy(update={"base_url": root}), **options)


CHAT_TEMPLATE_PATH = Path(__file__).with_name("templates") / "bbt_base.jinja"
