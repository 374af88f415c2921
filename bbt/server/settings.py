"""Server settings: arguments, then ``BBT_SERVER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from bbt.errors import ConfigurationError


class ServerSettings(BaseSettings):
    """How the app guards and schedules its backend.

    ``api_keys`` come from ``BBT_SERVER_API_KEYS`` (comma-separated) and/or from
    ``BBT_SERVER_API_KEY_FILE`` (one key per line; blank lines and ``#`` comments skipped).
    When any key is configured every ``/v1`` route needs ``Authorization: Bearer <key>``.
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
        return self
