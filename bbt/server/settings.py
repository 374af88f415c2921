"""Server settings: arguments, then ``BBT_SERVER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bbt.errors import ConfigurationError
from bbt.protocol.registry import (
    DEFAULT_MAX_RECIPE_BYTES,
    DEFAULT_MAX_RECIPE_DEPTH,
    DEFAULT_PAGE_SIZE,
    MAX_JSON_DEPTH,
    MAX_PAGE_SIZE,
)
from bbt.protocol.sessions import SessionLimits

#: Requests that may wait for the backend (beyond those running) before the app answers 503.
#: A tuner sends one request at a time, so 16 waiting means 16 busy clients; a longer queue
#: mostly holds requests whose clients time out before their turn comes.
DEFAULT_MAX_QUEUE = 16
#: Idle keep-alive seconds. Above httpx's 5 s keepalive_expiry on purpose: the client must
#: be the side that closes an idle connection, else a request sent just as the server closes
#: it fails with a dropped connection (uvicorn's own default is also 5 s).
DEFAULT_KEEP_ALIVE_S = 15
#: Floor of the default connection limit.
MIN_DEFAULT_CONNECTIONS = 128
#: Largest projection matrix one session builds: 2.5x paper scale (n=50, H=1024, d=500 is
#: 102.4 MB, built in ~0.2 s), so every recipe of the paper fits, while a 121-byte request
#: can no longer make the server spend seconds and hundreds of MB (issue 18).
DEFAULT_MAX_PROJECTION_BYTES = 256 * 1024**2
#: One key's share of session memory: its 4 default slots at paper scale (4 x 102.6 MB)
#: fit, and 4 keys can fill the 2 GiB of all sessions before anyone waits.
DEFAULT_MAX_SESSION_BYTES_PER_KEY = 512 * 1024**2
#: Bytes of JSON after which a ``GET /v1/prompts`` page ends early (it always holds one
#: prompt): with 64 KB recipes, 1000 rows would be a 64 MB answer held in memory at once.
DEFAULT_REGISTRY_PAGE_BYTES = 4 * 2**20
#: Seconds from a connection's first byte (or its opening) to the end of its request head.
#: A real client sends its head in one packet; 10 s covers a slow link many times over,
#: and an idle socket holds its file descriptor no longer than that.
DEFAULT_HEADER_TIMEOUT_S = 10.0
#: Seconds for a whole request body, from the end of the head. 60 s carries the default
#: 32 MiB limit at about 0.5 MB/s; bodies of tuners are kilobytes to a few megabytes.
DEFAULT_BODY_TIMEOUT_S = 60.0
#: The default share of the connection limit one client address may hold (a quarter).
PER_CLIENT_SHARE = 4


class ServerSettings(BaseSettings):
    """How the app guards and schedules its backend.

    ``api_keys`` come from ``BBT_SERVER_API_KEYS`` (comma-separated) and/or from
    ``BBT_SERVER_API_KEY_FILE`` (one key per line; blank lines and ``#`` comments skipped).
    When any key is configured every ``/v1`` route needs ``Authorization: Bearer <key>``.

    Scheduling and limits (``BBT_SERVER_MAX_CONCURRENCY``, ``_MAX_QUEUE``,
    ``_MAX_CONNECTIONS``, ``_MAX_CONNECTIONS_PER_CLIENT``, ``_KEEP_ALIVE_S``,
    ``_HEADER_TIMEOUT_S``, ``_BODY_TIMEOUT_S``): see docs/server.md, *Operations and limits*.
    """

    model_config = SettingsConfigDict(env_prefix="BBT_SERVER_", extra="ignore")

    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list, description="Accepted bearer keys; empty = no authentication."
    )
    api_key_file: Path | None = Field(default=None, description="File with one key per line.")
    max_body_bytes: int | None = Field(
        default=None,
        ge=1,
        description="Largest request body read; None = the backend's advertised limit.",
    )
    max_concurrency: int = Field(
        default=1, ge=1, description="Backend calls run at once (backends assume one)."
    )
    max_queue: int = Field(
        default=DEFAULT_MAX_QUEUE,
        ge=0,
        description="Requests that may wait for the backend beyond those running; when "
        "full, more get 503 with Retry-After. 0: only requests that can start at once.",
    )
    max_connections: int | None = Field(
        default=None,
        ge=1,
        description="Open connections at most. Past it a new connection closes the least "
        "recently active idle one (no request in flight); when every one is busy it is "
        "answered 503 + Retry-After and closed. None = max(128, 2 x (max_concurrency + "
        "max_queue)). Must exceed max_concurrency + max_queue.",
    )
    max_connections_per_client: int | None = Field(
        default=None,
        ge=1,
        description="Open connections one client address holds, with the same rule; "
        "None = a quarter of the connection limit (32 by default).",
    )
    keep_alive_s: int = Field(
        default=DEFAULT_KEEP_ALIVE_S,
        ge=1,
        le=3600,
        description="uvicorn's timeout_keep_alive: seconds an idle connection stays open.",
    )
    header_timeout_s: float = Field(
        default=DEFAULT_HEADER_TIMEOUT_S,
        gt=0,
        le=3600,
        description="Seconds a connection has to send a complete request head, from its "
        "opening or from the first byte after a keep-alive pause; then it is closed.",
    )
    body_timeout_s: float = Field(
        default=DEFAULT_BODY_TIMEOUT_S,
        gt=0,
        le=3600,
        description="Seconds a whole request body has to arrive after its head; then the "
        "answer is 408 and the connection is closed.",
    )

    sessions: bool = Field(
        default=True,
        description="Offer projection sessions (protocol 1.1; capability 'sessions').",
    )
    session_idle_timeout_s: float = Field(
        default=600.0, gt=0, description="A session unused this long is dropped."
    )
    max_sessions_per_key: int = Field(
        default=4, ge=1, description="Sessions one API key (or, with auth off, everyone) holds."
    )
    max_session_bytes: int = Field(
        default=2 * 1024**3,
        ge=1,
        description="Memory all sessions together hold (A is n*H*d*4 bytes: 102 MB at "
        "n=50, H=1024, d=500).",
    )
    max_projection_bytes: int = Field(
        default=DEFAULT_MAX_PROJECTION_BYTES,
        ge=1,
        description="Largest A (n*H*d*4 bytes) one session, or one store-by-projection, may "
        "build; larger recipes are refused (422) before anything is built.",
    )
    max_session_bytes_per_key: int = Field(
        default=DEFAULT_MAX_SESSION_BYTES_PER_KEY,
        ge=1,
        description="Memory the sessions of one API key (or, with auth off, everyone) hold "
        "together; past it an open evicts the key's own idle sessions or answers 429.",
    )
    session_evict_after_s: float = Field(
        default=30.0,
        ge=0,
        description="A session idle this long may be evicted to make room for a new one "
        "(its client reopens it); when none is, opening answers 429/503 with Retry-After.",
    )

    # The prompt registry's free-form input and its list (docs/server.md, *Prompt registry*).
    registry_max_recipe_bytes: int = Field(
        default=DEFAULT_MAX_RECIPE_BYTES,
        ge=2,
        description="Largest recipe a stored prompt may carry (compact JSON bytes); it "
        "counts against the key's byte bound with the prompt itself.",
    )
    registry_max_recipe_depth: int = Field(
        default=DEFAULT_MAX_RECIPE_DEPTH,
        ge=1,
        le=MAX_JSON_DEPTH,
        description="Deepest nesting of objects and arrays in a recipe; at most "
        f"{MAX_JSON_DEPTH}, so every stored row can be sent back.",
    )
    registry_page_size: int = Field(
        default=DEFAULT_PAGE_SIZE,
        ge=1,
        description="Prompts per GET /v1/prompts page when the client names no limit (a "
        "client from before paging sees only this first page).",
    )
    registry_max_page_size: int = Field(
        default=MAX_PAGE_SIZE,
        ge=1,
        description="Largest ?limit= honoured; a larger one is clamped to it.",
    )
    registry_max_page_bytes: int = Field(
        default=DEFAULT_REGISTRY_PAGE_BYTES,
        ge=1,
        description="A page ends early once its JSON reaches this many bytes (it always "
        "holds one prompt), bounding the answer whatever the recipes' sizes.",
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [k.strip() for k in value.split(",") if k.strip()]
        return value

    @model_validator(mode="after")
    def _read_key_file(self) -> ServerSettings:
        if self.api_key_file is not None:
            try:
                lines = self.api_key_file.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                # The path is not secret; the content never appears in a message.
                raise ConfigurationError(
                    f"cannot read API key file {self.api_key_file}: {exc.strerror}"
                ) from None
            keys = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
            self.api_keys = [*self.api_keys, *(SecretStr(k) for k in keys)]
        if any(not k.get_secret_value() for k in self.api_keys):
            raise ValueError("API keys must not be empty")
        admitted = self.max_concurrency + self.max_queue
        if self.max_connections is not None and self.max_connections <= admitted:
            # uvicorn's own 503 has no Retry-After and no error envelope: the app's queue
            # bound must be reached first.
            raise ValueError(
                f"max_connections ({self.max_connections}) must exceed max_concurrency + "
                f"max_queue ({admitted})"
            )
        return self

    def session_limits(self) -> SessionLimits:
        return SessionLimits(
            idle_timeout_s=self.session_idle_timeout_s,
            max_per_key=self.max_sessions_per_key,
            max_total_bytes=self.max_session_bytes,
            evict_after_s=self.session_evict_after_s,
            max_projection_bytes=self.max_projection_bytes,
            max_key_bytes=self.max_session_bytes_per_key,
        )

    @property
    def connection_limit(self) -> int:
        """The connection limit in force (``max_connections`` or its default)."""
        if self.max_connections is not None:
            return self.max_connections
        return max(MIN_DEFAULT_CONNECTIONS, 2 * (self.max_concurrency + self.max_queue))

    @property
    def per_client_connection_limit(self) -> int:
        """Connections one client address may hold (``max_connections_per_client`` or its
        default, never above the connection limit)."""
        total = self.connection_limit
        if self.max_connections_per_client is not None:
            return min(self.max_connections_per_client, total)
        return max(1, total // PER_CLIENT_SHARE)

    def uvicorn_options(self) -> dict[str, Any]:
        """Keyword arguments for ``uvicorn.Config``: the guarded HTTP protocol and keep-alive.

        The connection bounds and the request-head timeout live in the protocol
        (:mod:`bbt.server._connections`), not in uvicorn's ``limit_concurrency``: that one
        counts idle sockets too, so a few hundred of them, no bytes sent, made the whole
        server answer 503. WebSockets are off: the app serves none, and an upgraded
        connection would leave the guard's books.
        """
        from bbt.server._connections import ConnectionLimits, guarded_protocol

        limits = ConnectionLimits(
            max_connections=self.connection_limit,
            max_per_client=self.per_client_connection_limit,
            header_timeout_s=self.header_timeout_s,
        )
        return {
            "http": guarded_protocol(limits),
            "ws": "none",
            "timeout_keep_alive": self.keep_alive_s,
        }
