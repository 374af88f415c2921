"""Settings: arguments beat the environment, which beats the .env file, which beats defaults."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from bbt.client import Client, ClientSettings
from bbt.client._config import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    DEFAULT_TIMEOUT_PER_SEQUENCE,
)
from bbt.errors import ConfigurationError

ROOT = Path(__file__).resolve().parents[2]


def _write_env(path: Path) -> Path:
    path.write_text(
        "BBT_BASE_URL=http://from-dotenv:1\n"
        "BBT_API_KEY=dotenv-key\n"
        "BBT_MODEL=dotenv-model\n"
        "BBT_TIMEOUT=11\n"
        "BBT_MAX_RETRIES=1\n"
        "BBT_DTYPE=float16\n"
        "BBT_SERVER_API_KEYS=server-side,not-ours\n"
    )
    return path


@pytest.mark.usefixtures("no_env")
def test_defaults_without_any_source() -> None:
    s = ClientSettings()
    assert s.base_url is None
    assert s.api_key is None
    assert s.model is None
    assert s.timeout == DEFAULT_TIMEOUT
    assert s.max_retries == DEFAULT_MAX_RETRIES
    assert s.timeout_per_sequence == DEFAULT_TIMEOUT_PER_SEQUENCE
    assert s.connect_timeout is None
    assert s.dtype == "float32"


@pytest.mark.usefixtures("no_env")
def test_dotenv_in_cwd_is_read_by_default(tmp_path: Path) -> None:
    _write_env(tmp_path / ".env")
    s = ClientSettings()
    assert s.base_url == "http://from-dotenv:1"
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "dotenv-key"
    assert s.model == "dotenv-model"
    assert s.timeout == 11.0
    assert s.max_retries == 1
    assert s.dtype == "float16"


@pytest.mark.usefixtures("no_env")
def test_env_file_none_disables_dotenv(tmp_path: Path) -> None:
    _write_env(tmp_path / ".env")
    assert ClientSettings(env_file=None).base_url is None


@pytest.mark.usefixtures("no_env")
def test_env_file_path_is_configurable(tmp_path: Path) -> None:
    other = _write_env(tmp_path / "elsewhere.env")
    assert ClientSettings(env_file=other).model == "dotenv-model"


@pytest.mark.usefixtures("no_env")
def test_environment_beats_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_env(tmp_path / ".env")
    monkeypatch.setenv("BBT_BASE_URL", "http://from-env:2")
    monkeypatch.setenv("BBT_MAX_RETRIES", "7")
    s = ClientSettings()
    assert s.base_url == "http://from-env:2"
    assert s.max_retries == 7
    assert s.model == "dotenv-model"  # not in the environment: the file still counts


@pytest.mark.usefixtures("no_env")
def test_arguments_beat_environment_and_dotenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_env(tmp_path / ".env")
    monkeypatch.setenv("BBT_BASE_URL", "http://from-env:2")
    monkeypatch.setenv("BBT_API_KEY", "env-key")
    client = Client("http://from-args:3/", api_key="arg-key", max_retries=0, timeout=2.5)
    try:
        s = client.settings
        assert client.base_url == "http://from-args:3"
        assert s.api_key is not None
        assert s.api_key.get_secret_value() == "arg-key"
        assert s.max_retries == 0  # an explicit 0 is not "not given"
        assert s.timeout == 2.5
        assert s.model == "dotenv-model"
    finally:
        client.close()


@pytest.mark.usefixtures("no_env")
def test_client_without_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="BBT_BASE_URL"):
        Client()


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize(
    ("name", "value"),
    [("BBT_TIMEOUT", "0"), ("BBT_MAX_RETRIES", "-1"), ("BBT_DTYPE", "int8")],
)
def test_invalid_values_fail_fast(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        ClientSettings()


def test_env_example_documents_every_variable() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^#?\s*(BBT_[A-Z_]+)=", text, flags=re.MULTILINE))
    client_vars = {f"BBT_{name.upper()}" for name in ClientSettings.model_fields}
    assert client_vars <= documented
    assert {"BBT_SERVER_API_KEYS", "BBT_SERVER_API_KEY_FILE"} <= documented


# ------------------------------------------------------------------ empty means unset


@pytest.mark.usefixtures("no_env")
@pytest.mark.parametrize("blank", ["", "   ", "\t\n"])
def test_a_blank_key_is_no_key_from_every_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, blank: str
) -> None:
    # What `cp .env.example .env` used to leave behind: BBT_API_KEY= with nothing after it.
    (tmp_path / ".env").write_text(f"BBT_API_KEY={blank}\nBBT_MODEL={blank}\n")
    assert ClientSettings().api_key is None
    assert ClientSettings().model is None  # "empty means the first model served"
    monkeypatch.setenv("BBT_API_KEY", blank)
    assert ClientSettings(env_file=None).api_key is None
    monkeypatch.delenv("BBT_API_KEY")
    assert ClientSettings(env_file=None, api_key=blank).api_key is None
    assert ClientSettings(env_file=None, api_key=SecretStr(blank)).api_key is None
    assert ClientSettings(env_file=None, base_url=blank).base_url is None


@pytest.mark.usefixtures("no_env")
def test_an_explicit_blank_key_overrides_a_configured_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Precedence is unchanged: an explicit empty argument says "no key" and wins.
    monkeypatch.setenv("BBT_API_KEY", "env-key")
    assert ClientSettings(env_file=None, api_key="").api_key is None


@pytest.mark.usefixtures("no_env")
def test_surrounding_whitespace_is_not_part_of_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BBT_API_KEY", "  sk-padded \n")
    key = ClientSettings(env_file=None).api_key
    assert key is not None
    assert key.get_secret_value() == "sk-padded"


@pytest.mark.usefixtures("no_env")
def test_env_example_copied_as_dotenv_leaves_the_embedded_default_on(tmp_path: Path) -> None:
    # README: `cp .env.example .env; bbt tune ...` must reach the embedded default server,
    # which `bbt tune` starts only while no URL is configured, and must send no key.
    (tmp_path / ".env").write_text((ROOT / ".env.example").read_text())
    s = ClientSettings()
    assert s.base_url is None
    assert s.api_key is None
    assert s.model is None
    # Every value the file does set is one the settings accept (no ValidationError above)
    # and the documented default.
    assert s.timeout == DEFAULT_TIMEOUT
    assert s.max_retries == DEFAULT_MAX_RETRIES
    assert s.timeout_per_sequence == DEFAULT_TIMEOUT_PER_SEQUENCE
    assert s.connect_timeout is None
