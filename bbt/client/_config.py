"""Client settings: explicit arguments, then ``BBT_*`` environment variables, then a ``.env`` file.

The precedence is pydantic-settings' own (init kwargs > environment > dotenv > defaults);
the clients pass only the arguments a caller actually gave, so ``None`` means "not given"
and the next source decides. One exception to "each field on its own": the API key and the
service URL must come from the same place (see :class:`ClientSettings`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bbt.errors import ConfigurationError
from bbt.protocol import DType

#: Read (and write and pool) timeout of one request in seconds: how long the server may stay
#: silent. A logits request adds ``timeout_per_sequence`` for each sequence it carries.
DEFAULT_TIMEOUT = 60.0
#: Seconds to open a connection. Short, because a host that has not accepted in 10 s is
#: down or unreachable, and retrying soon beats waiting out a long read timeout; never more
#: than ``timeout`` unless set explicitly.
DEFAULT_CONNECT_TIMEOUT = 10.0
#: Extra read seconds per sequence (one prompt on one text) of a logits request, so a large
#: request gets the time its compute needs instead of timing out and being retried behind
#: itself. 0.25 s is a floor of 4 sequences/s: about 8x below the slowest figure measured for
#: the embedded default on a shared 2-core CPU (33.5 sequences/s in float32, docs/server.md),
#: so CPU-served models get through, while a paper-scale request (P=20 x B=32 = 640
#: sequences) waits at most 60 + 160 s. A fast (GPU) server answers long before; the cost of
#: a generous value is only that a server which hangs without closing the connection is
#: noticed later.
DEFAULT_TIMEOUT_PER_SEQUENCE = 0.25
DEFAULT_MAX_RETRIES = 3
DEFAULT_MAX_RETRY_WAIT = 60.0
#: A busy server (full queue, rate limit) asks for waits of seconds to a minute; ten minutes
#: of them is a tuning job waiting its turn, not a broken service.
DEFAULT_MAX_BACKPRESSURE_WAIT = 600.0
DEFAULT_ENV_FILE = ".env"


class ClientSettings(BaseSettings):
    """Where the service is and how to talk to it.

    ``ClientSettings(env_file=None)`` ignores any ``.env`` file; ``env_file="path"`` reads
    another one. ``base_url`` may stay unset here (a caller that falls back to an
    in-process model checks :attr:`base_url` itself); an HTTP client calls
    :meth:`require_base_url`, which raises :class:`ConfigurationError`.

    **The key goes only where its own source points.** Each of ``api_key`` and
    ``base_url`` comes from one source: an explicit argument (``--api-key`` /
    ``--base-url`` on the CLI), the environment (``BBT_API_KEY`` / ``BBT_BASE_URL``) or the
    ``.env`` file. When both are set, they must come from the same source, unless the URL
    is an explicit argument (the caller chose where the key goes). Anything else raises
    :class:`ConfigurationError` naming both sources: a ``.env`` in the working directory
    (one that came with a checkout, say) cannot send the key from your environment, or
    from ``--api-key``, to a host it names; nor can your environment's URL receive a key
    some ``.env`` holds. A key without a URL, or a URL without a key, is never refused.
    """

    model_config = SettingsConfigDict(
        env_prefix="BBT_",
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        # The same .env may hold server-side BBT_SERVER_* variables: not ours, not an error.
        extra="ignore",
        validate_default=True,
    )

    base_url: str | None = Field(default=None, description="Service root, e.g. http://host:8000")
    api_key: SecretStr | None = Field(default=None, description="Bearer key; never printed.")
    model: str | None = Field(default=None, description="Model id; default: the first served.")
    timeout: float = Field(
        default=DEFAULT_TIMEOUT,
        gt=0,
        description="Read timeout in seconds: how long the server may stay silent.",
    )
    connect_timeout: float | None = Field(
        default=None,
        gt=0,
        description=(
            f"Seconds to open a connection; unset: {DEFAULT_CONNECT_TIMEOUT:g}, or timeout if less."
        ),
    )
    timeout_per_sequence: float = Field(
        default=DEFAULT_TIMEOUT_PER_SEQUENCE,
        ge=0,
        description="Read seconds added per sequence (prompt x text) of a logits request.",
    )
    max_retries: int = Field(default=DEFAULT_MAX_RETRIES, ge=0, description="0 turns retries off.")
    max_backpressure_wait: float = Field(
        default=DEFAULT_MAX_BACKPRESSURE_WAIT,
        ge=0,
        description="Seconds of Retry-After waits a request may spend behind a busy server "
        "(429/503 with Retry-After) without using up max_retries; 0: they count as retries.",
    )
    max_retry_wait: float = Field(
        default=DEFAULT_MAX_RETRY_WAIT, ge=0, description="Cap on one wait, Retry-After included."
    )
    dtype: DType = Field(default="float32", description="Element type of prompts on the wire.")
    max_concurrency: int = Field(
        default=1,
        ge=1,
        description="Requests one call keeps in flight; a logits call splits its prompts into "
        "at least this many requests (fan-out over server replicas). 1: one at a time.",
    )

    @field_validator("base_url", "api_key", "model", "connect_timeout", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        """An empty or whitespace-only value means "none", from any source.

        ``BBT_API_KEY=`` in a .env file (or ``api_key=""``) must not become the header
        ``Authorization: Bearer ``, which httpx refuses to send; and ``BBT_MODEL=`` means
        "the first model served", as .env.example says. Surrounding whitespace is dropped:
        no URL, key or model id starts or ends with it, and a header value cannot.
        """
        raw = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(raw, str):
            raw = raw.strip()
            return raw or None
        return value

    def __init__(self, env_file: str | Path | None = DEFAULT_ENV_FILE, **values: Any) -> None:
        # Only explicitly given values reach pydantic-settings, so None never shadows the env.
        given = {k: v for k, v in values.items() if v is not None}
        super().__init__(_env_file=env_file, **given)
        self._check_key_and_url_sources(given, env_file)

    def _source_of(self, name: str, given: dict[str, Any], env_file: str | Path | None) -> str:
        """Where the (set) field ``name`` came from, by pydantic-settings' precedence: an
        argument, else the environment (any value there, even blank, shadows the file;
        names match case-insensitively, as pydantic-settings matches them), else the file."""
        if name in given:
            return "an argument"
        variable = f"BBT_{name.upper()}"
        if any(k.upper() == variable for k in os.environ):
            return "the environment"
        return f"the .env file ({env_file})"

    def _check_key_and_url_sources(
        self, given: dict[str, Any], env_file: str | Path | None
    ) -> None:
        """Refuse a key and a URL from different sources (the rule in the class docstring)."""
        if self.api_key is None or self.base_url is None or "base_url" in given:
            return
        key_from = self._source_of("api_key", given, env_file)
        url_from = self._source_of("base_url", given, env_file)
        if key_from == url_from:
            return
        # Neither value is quoted: the key is secret, and the URL may hold a password.
        raise ConfigurationError(
            f"the API key comes from {key_from} (BBT_API_KEY / --api-key) but the service "
            f"URL from {url_from} (BBT_BASE_URL / --base-url); bbt sends a key only to a "
            "URL configured in the same place, so that a .env file cannot redirect a key "
            "set elsewhere: set both in the same place, or give the URL explicitly "
            "(--base-url / base_url=...)"
        )

    def require_base_url(self) -> str:
        if not self.base_url:
            raise ConfigurationError(
                "no service URL: pass base_url=..., or set BBT_BASE_URL in the environment "
                "or in a .env file"
            )
        return self.base_url.rstrip("/")

    def http_timeout(self, sequences: int = 0) -> httpx.Timeout:
        """The httpx timeout of one request carrying ``sequences`` logits sequences.

        Connecting is short (a dead host should fail fast and be retried); reading, the
        wait for the server's answer, is ``timeout`` plus ``timeout_per_sequence`` for each
        sequence, since that wait is the server's compute and grows with the request.
        """
        connect = self.connect_timeout
        if connect is None:
            connect = min(DEFAULT_CONNECT_TIMEOUT, self.timeout)
        read = self.timeout + sequences * self.timeout_per_sequence
        return httpx.Timeout(self.timeout, connect=connect, read=read)
