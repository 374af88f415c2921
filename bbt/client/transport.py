"""The client core's wire mechanics, shared by every client and engine adapter.

What does not depend on the service's API lives here, once: the headers every request
carries, redaction of keys and URL credentials, the mapping of HTTP and transport failures
to :mod:`bbt.errors`, the retry policy (jittered backoff, ``Retry-After``, backpressure),
usage accounting and the fan-out of one call's requests. :class:`HTTPCore` holds the
per-client state those need; :class:`SyncHTTPCore` adds a blocking ``httpx.Client``.

:class:`bbt.Client` and :class:`bbt.AsyncClient` are the bbt protocol on top of it; an
engine adapter such as :class:`bbt.vllm.VLLMService` is a codec (request bodies, response
parsing, capabilities) on top of :class:`SyncHTTPCore`, and so retries, counts and fans
out exactly as the bbt clients do.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception
from tenacity.wait import wait_base

from bbt._version import __version__
from bbt.client._config import DEFAULT_ENV_FILE, ClientSettings
from bbt.client._fanout import run_ordered
from bbt.client.failures import (
    LOCAL_FAILURES,
    error_for_status,
    parse_retry_after,
    status_class,
    status_error,
    transport_error,
)
from bbt.client.redaction import check_api_key, redact, redact_url, split_userinfo
from bbt.errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    RateLimitError,
    ServerError,
)

__all__ = [
    "BACKOFF_BASE",
    "DEFAULT_ENV_FILE",
    "LOCAL_FAILURES",
    "MIN_BACKPRESSURE_RETRY_AFTER",
    "RETRYABLE_STATUSES",
    "USER_AGENT",
    "ClientSettings",
    "HTTPCore",
    "RawBody",
    "RetryStop",
    "RetryWait",
    "SyncHTTPCore",
    "UsageStats",
    "check_api_key",
    "error_for_status",
    "is_backpressure",
    "is_retryable",
    "parse_retry_after",
    "redact",
    "redact_url",
    "server_retry_after",
    "split_userinfo",
    "status_class",
    "status_error",
    "transport_error",
]

logger = logging.getLogger("bbt.client")

USER_AGENT = f"bbt/{__version__} python-httpx/{httpx.__version__}"
#: First backoff step in seconds; attempt k waits about BACKOFF_BASE * 2**(k-1), jittered.
BACKOFF_BASE = 0.5
#: Statuses worth another try: the same request may well succeed later.
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

T = TypeVar("T")
S = TypeVar("S", bound="SyncHTTPCore")


@dataclass
class UsageStats:
    """Running totals of what a client spent. Thread-safe enough for one client per thread.

    ``calls`` is the paper's unit: candidate prompts evaluated, counted once per
    :meth:`Service.logits` call and prompt however the client split the work into requests.
    """

    calls: int = 0
    requests: int = 0
    retries: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    sequences: int = 0
    tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)

    def copy(self) -> UsageStats:
        return UsageStats(**asdict(self))

    def __sub__(self, other: UsageStats) -> UsageStats:
        a, b = asdict(self), asdict(other)
        return UsageStats(**{k: a[k] - b[k] for k in a})

    def __add__(self, other: UsageStats) -> UsageStats:
        a, b = asdict(self), asdict(other)
        return UsageStats(**{k: a[k] + b[k] for k in a})


@dataclass(frozen=True)
class RawBody:
    """A request body that is not a JSON model (e.g. a binary frame)."""

    content: bytes
    content_type: str


# --------------------------------------------------------------------------- retries


def is_retryable(exc: BaseException) -> bool:
    """Connection errors, timeouts, 408, 429 and 5xx; never another 4xx nor a bad body."""
    if isinstance(exc, APIConnectionError):  # includes APITimeoutError
        return True
    return isinstance(exc, APIStatusError) and (
        exc.status_code in RETRYABLE_STATUSES or exc.status_code >= 500
    )


#: The least Retry-After (s) that marks an answer as backpressure: "come back in a second or
#: more" is a server pacing its clients; "0" is no guidance, and retrying it outside the
#: max_retries count would be a hot loop.
MIN_BACKPRESSURE_RETRY_AFTER = 1.0


def is_backpressure(exc: BaseException | None) -> bool:
    """A 429 or 503 that says when to come back (``Retry-After`` of at least a second): the
    server is busy, not broken (e.g. its queue is full), so waiting as told should succeed."""
    return isinstance(exc, RateLimitError | ServerError) and (
        exc.status_code in (429, 503)
        and exc.retry_after is not None
        and exc.retry_after >= MIN_BACKPRESSURE_RETRY_AFTER
    )


class RetryStop:
    """When to give up: after ``max_retries`` ordinary failures (connection errors, timeouts,
    5xx, a 429/503 without ``Retry-After``). Backpressure answers (:func:`is_backpressure`)
    do not use up that count: they are retried as long as the waits they asked for add up to
    less than ``max_backpressure_wait`` seconds, so a client behind a full queue still gets
    its turn. ``max_retries=0`` turns every retry off. One instance per request."""

    def __init__(self, max_retries: int, max_backpressure_wait: float) -> None:
        self.max_retries = max_retries
        self.max_backpressure_wait = max_backpressure_wait
        self.failures = 0

    def __call__(self, retry_state: RetryCallState) -> bool:
        if self.max_retries == 0:
            return True
        outcome = retry_state.outcome
        exc = outcome.exception() if outcome is not None else None
        if is_backpressure(exc) and self.max_backpressure_wait > 0:
            # idle_for: the waits scheduled so far (tenacity's sum, slept or not).
            return retry_state.idle_for >= self.max_backpressure_wait
        self.failures += 1
        return self.failures > self.max_retries


def server_retry_after(exc: BaseException | None) -> float | None:
    if isinstance(exc, RateLimitError | ServerError):
        return exc.retry_after
    return None


class RetryWait(wait_base):
    """Wait before retry k: the server's Retry-After if it sent one, else jittered backoff.

    Backoff is "equal jitter": half of ``base * 2**(k-1)`` fixed, half uniform, so clients
    that failed together spread out but never hammer straight back. Either way the wait is
    capped by ``max_wait``.
    """

    def __init__(
        self, max_wait: float, base: float = BACKOFF_BASE, rng: random.Random | None = None
    ) -> None:
        self.max_wait = max_wait
        self.base = base
        self.rng = rng or random.Random()

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        hint = server_retry_after(outcome.exception() if outcome is not None else None)
        if hint is not None:
            return min(hint, self.max_wait)
        step = min(self.max_wait, self.base * 2.0 ** (retry_state.attempt_number - 1))
        return step / 2 + self.rng.uniform(0, step / 2)


# --------------------------------------------------------------------------- the core


class HTTPCore:
    """A client's settings, headers, retry policy and usage, for whichever API it speaks.

    Subclasses add what their API needs: :class:`bbt.Client` the protocol header and
    envelope parsing, an engine adapter its request bodies and answers. Nothing here sends.
    """

    #: Content-Type after every other header (bbt's clients), or before Authorization (the
    #: vLLM adapter, as it always sent it). Order means nothing in HTTP; keeping each
    #: client's keeps the bytes it sends what they were.
    _content_type_last = True

    def __init__(self, settings: ClientSettings, *, rng: random.Random | None = None) -> None:
        self._settings = settings
        check_api_key(settings.api_key)
        self._usage = UsageStats()
        # Fanned-out requests count their bytes and retries from several threads.
        self._usage_lock = threading.Lock()
        self._wait = RetryWait(settings.max_retry_wait, rng=rng)

    @property
    def settings(self) -> ClientSettings:
        return self._settings

    @property
    def usage(self) -> UsageStats:
        """Live running totals; take ``usage.copy()`` for a snapshot."""
        return self._usage

    def _headers(self) -> dict[str, str]:
        """Headers every request carries (a subclass may add its own in front)."""
        headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
        if self._settings.api_key is not None:
            headers["Authorization"] = f"Bearer {self._settings.api_key.get_secret_value()}"
        return headers

    def _timeout(self, sequences: int = 0) -> httpx.Timeout:
        """The timeout of a request that carries ``sequences`` logits sequences (0: any other)."""
        return self._settings.http_timeout(sequences)

    def _new_request(
        self,
        http: httpx.Client | httpx.AsyncClient,
        method: str,
        path: str,
        content: bytes | None,
        content_type: str | None,
        sequences: int = 0,
    ) -> httpx.Request:
        """A request with its body already serialised (so ``bytes_sent`` is the real size)."""
        headers = self._headers()
        if content_type is not None:
            auth = None if self._content_type_last else headers.pop("Authorization", None)
            headers["Content-Type"] = content_type
            if auth is not None:
                headers["Authorization"] = auth
        # The timeout travels with the request (its "timeout" extension), so every retry of
        # it gets the same allowance.
        return http.build_request(
            method, path, content=content, headers=headers, timeout=self._timeout(sequences)
        )

    def _count_sent(self, request: httpx.Request) -> None:
        with self._usage_lock:
            self._usage.requests += 1
            self._usage.bytes_sent += len(request.content)

    def _count_received(self, response: httpx.Response) -> None:
        # Bytes as they came off the wire (compressed, if the server compressed); a response
        # built in memory (a mock transport) never streamed, so count its body instead.
        with self._usage_lock:
            self._usage.bytes_received += response.num_bytes_downloaded or len(response.content)

    def _transport_error(self, exc: httpx.HTTPError) -> APIError:
        return transport_error(exc, self._settings.api_key)

    def _retry_kwargs(self) -> dict[str, Any]:
        """Arguments for tenacity's Retrying/AsyncRetrying; the caller adds ``sleep``."""
        return {
            "stop": RetryStop(self._settings.max_retries, self._settings.max_backpressure_wait),
            "retry": retry_if_exception(is_retryable),
            "wait": self._wait,
            "before_sleep": self._before_retry,
            "reraise": True,
        }

    def _before_retry(self, retry_state: RetryCallState) -> None:
        with self._usage_lock:
            self._usage.retries += 1
        outcome = retry_state.outcome
        self._log_retry(retry_state, outcome.exception() if outcome is not None else None)

    def _log_retry(self, retry_state: RetryCallState, exc: BaseException | None) -> None:
        """Say that a request is retried (an adapter may word it for its engine)."""
        wait = retry_state.next_action.sleep if retry_state.next_action else 0.0
        # str(exc) is already redacted; the key is never formatted into a log record.
        logger.warning(
            "retrying %s after %s (attempt %d of %d, waiting %.2fs)",
            retry_state.args[0].url.path if retry_state.args else "request",
            type(exc).__name__ if exc else "error",
            retry_state.attempt_number + 1,
            self._settings.max_retries + 1,
            wait,
        )


class SyncHTTPCore(HTTPCore):
    """:class:`HTTPCore` with a blocking ``httpx.Client``: send with retries, fan out."""

    def _open_http(
        self,
        base_url: str,
        *,
        transport: httpx.BaseTransport | None,
        auth: httpx.Auth | None = None,
        width: int = 1,
        threads_per_call: bool = False,
    ) -> None:
        """Open the connection pool; ``width`` requests of one call may be in flight.

        The fan-out threads live as long as the client, unless ``threads_per_call``: then
        each call starts its own and stops them before it returns, so a failed call has
        no idle threads racing through its queue while the failure is reported (the vLLM
        adapter's calls are hundreds of one-pair requests; the first failure must stop
        them after a few).
        """
        self._http = httpx.Client(
            base_url=base_url, auth=auth, transport=transport, timeout=self._timeout()
        )
        #: How retries wait; tests replace it to record the waits instead of sleeping.
        self._sleep: Callable[[float], None] = time.sleep
        self._width = width
        self._threads_per_call = threads_per_call
        #: Threads that send one call's requests at once (fan-out); None: one at a time.
        self._pool = (
            ThreadPoolExecutor(width, "bbt-fanout") if width > 1 and not threads_per_call else None
        )

    def _send_request(self, request: httpx.Request, parse: Callable[[httpx.Response], T]) -> T:
        """Send ``request`` (retried by the policy) and return ``parse`` of its answer;
        ``parse`` raises for an answer that is an error (see :func:`status_error`)."""
        retrying = Retrying(sleep=lambda s: self._sleep(s), **self._retry_kwargs())
        result: T = retrying(self._attempt, request, parse)
        return result

    def _attempt(self, request: httpx.Request, parse: Callable[[httpx.Response], T]) -> T:
        self._count_sent(request)
        try:
            response = self._http.send(request)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        self._count_received(response)
        return parse(response)

    def _fan_out(self, jobs: Sequence[Callable[[], T]]) -> list[T]:
        """Run one call's ``jobs`` on the fan-out threads; results in job order (see
        :func:`bbt.client._fanout.run_ordered` for what a failure does)."""
        if not self._threads_per_call or self._width == 1 or len(jobs) <= 1:
            return run_ordered(self._pool, jobs)
        pool = ThreadPoolExecutor(min(self._width, len(jobs)), "bbt-fanout")
        try:
            return run_ordered(pool, jobs)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def __enter__(self: S) -> S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
