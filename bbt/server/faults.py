"""Fault injection for the mock (or any) server: latency, 429/500/503, slow, dropped, garbage.

A :class:`FaultConfig` is set per server; :class:`FaultInjector` draws one decision per
``/v1`` request from a seeded generator, so a run's sequence of faults is reproducible
(in arrival order). :class:`FaultMiddleware` applies them as raw ASGI, inside the app's
guard (so authentication and size limits still come first).
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from typing import Any, Literal

import anyio
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bbt.protocol import ErrorBody, ErrorEnvelope, ErrorType

FaultKind = Literal["rate_limit", "server_error", "unavailable", "timeout", "drop", "malformed"]
#: Scope key under which the middleware records the fault it injected (for the access log).
FAULT_SCOPE_KEY = "bbt.fault"

# Bodies of "malformed" answers: each is a 200 that no protocol model accepts.
_MALFORMED_BODIES = (
    b'{"model": "bbt-mock", "logits": {"dtype": "float32", "sha',
    b"<html><body>502 Bad Gateway</body></html>",
    b'{"unexpected": true}',
    b"[]",
    b"\x00\xff\xfe not json",
)


class FaultConfig(BaseModel):
    """What goes wrong, how often. Rates are probabilities per ``/v1`` request, summing to <= 1."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latency_ms: float = Field(default=0.0, ge=0, description="Fixed delay added to every request.")
    jitter_ms: float = Field(default=0.0, ge=0, description="Extra uniform delay in [0, jitter].")
    rate_429: float = Field(default=0.0, ge=0, le=1, description="Answer 429 with Retry-After.")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After of injected 429s.")
    rate_500: float = Field(default=0.0, ge=0, le=1, description="Answer 500.")
    rate_503: float = Field(default=0.0, ge=0, le=1, description="Answer 503.")
    rate_timeout: float = Field(
        default=0.0, ge=0, le=1, description="Sleep timeout_s, then answer normally."
    )
    timeout_s: float = Field(default=30.0, ge=0, description="Sleep of a slow (timeout) answer.")
    rate_drop: float = Field(
        default=0.0, ge=0, le=1, description="Close the connection without a complete response."
    )
    rate_malformed: float = Field(
        default=0.0, ge=0, le=1, description="Answer 200 with a body that is not protocol JSON."
    )
    seed: int | None = Field(default=0, description="Seed of the fault sequence; None = random.")

    @model_validator(mode="after")
    def _rates_sum(self) -> FaultConfig:
        if sum(self._table()) > 1 + 1e-9:
            raise ValueError("fault rates must sum to at most 1")
        return self

    def _table(self) -> list[float]:
        return [
            self.rate_429,
            self.rate_500,
            self.rate_503,
            self.rate_timeout,
            self.rate_drop,
            self.rate_malformed,
        ]

    @property
    def active(self) -> bool:
        return self.latency_ms > 0 or self.jitter_ms > 0 or sum(self._table()) > 0


_KINDS: tuple[FaultKind, ...] = (
    "rate_limit",
    "server_error",
    "unavailable",
    "timeout",
    "drop",
    "malformed",
)


@dataclass(frozen=True)
class FaultDecision:
    kind: FaultKind | None
    delay_s: float
    variant: int  # which malformed body


class FaultInjector:
    """Draws decisions from the config's seeded generator; safe across threads."""

    def __init__(self, config: FaultConfig) -> None:
        self.config = config
        self._rng = random.Random(config.seed)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {k: 0 for k in _KINDS}
        self.requests = 0

    def next(self) -> FaultDecision:
        c = self.config
        with self._lock:
            # Always draw the same number of values per request so the sequence of kinds
            # depends only on the seed and the request count, not on latency settings.
            jitter, u, variant = self._rng.random(), self._rng.random(), self._rng.randrange(1000)
            self.requests += 1
            kind: FaultKind | None = None
            edge = 0.0
            for name, rate in zip(_KINDS, c._table(), strict=True):
                edge += rate
                if u < edge:
                    kind = name
                    break
            if kind is not None:
                self.counts[kind] += 1
        delay = (c.latency_ms + jitter * c.jitter_ms) / 1000.0
        return FaultDecision(kind=kind, delay_s=delay, variant=variant % len(_MALFORMED_BODIES))


Scope = dict[str, Any]
Message = dict[str, Any]


class FaultMiddleware:
    """Raw ASGI middleware injecting faults into ``/v1`` requests."""

    def __init__(self, app: Any, injector: FaultInjector, api_prefix: str = "/v1") -> None:
        self.app = app
        self.injector = injector
        self.prefix = api_prefix

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        is_api = path == self.prefix or path.startswith(self.prefix + "/")
        if scope["type"] != "http" or not is_api:
            await self.app(scope, receive, send)
            return
        decision = self.injector.next()
        if decision.delay_s > 0:
            await anyio.sleep(decision.delay_s)
        kind = decision.kind
        if kind is None:
            await self.app(scope, receive, send)
            return
        scope[FAULT_SCOPE_KEY] = kind
        if kind == "timeout":
            await anyio.sleep(self.injector.config.timeout_s)
            await self.app(scope, receive, send)
        elif kind == "drop":
            # Promise a body, send none and return: uvicorn then closes the socket
            # ("returned without completing response"), and the client sees the
            # connection end mid-response (httpx.RemoteProtocolError). Raising before
            # starting would make uvicorn answer a well-formed 500 instead.
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"64")],
                }
            )
        elif kind == "malformed":
            body = _MALFORMED_BODIES[decision.variant]
            await _send(send, 200, body, [])
        else:
            status, etype, message = {
                "rate_limit": (429, ErrorType.rate_limit, "rate limit exceeded (injected fault)"),
                "server_error": (500, ErrorType.server_error, "internal error (injected fault)"),
                "unavailable": (503, ErrorType.unavailable, "overloaded (injected fault)"),
            }[kind]
            headers: list[tuple[bytes, bytes]] = []
            if kind == "rate_limit":
                headers.append((b"retry-after", str(self.injector.config.retry_after_s).encode()))
            env = ErrorEnvelope(error=ErrorBody(type=etype, message=message))
            await _send(send, status, env.model_dump_json().encode(), headers)


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
