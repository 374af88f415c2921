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
    # With the URL from the environment the key must come from there too (a key and a URL
    # from different places are refused; see the tests at the end).
    monkeypatch.setenv("BBT_API_KEY", "env-key")
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


# ------------------------------------------------------------------ key and URL: one source


def _dotenv(path: Path, **values: str) -> None:
    path.write_text("".join(f"BBT_{k.upper()}={v}\n" for k, v in values.items()))


@pytest.mark.usefixtures("no_env")
def test_a_dotenv_url_cannot_take_the_environment_s_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A .env in the working directory (a cloned repository, say) points the URL elsewhere;
    # before, the key from the user's environment went there as a Bearer header.
    _dotenv(tmp_path / ".env", base_url="http://attacker.example")
    monkeypatch.setenv("BBT_API_KEY", "env-key-3b7d")
    with pytest.raises(ConfigurationError) as info:
        ClientSettings()
    message = str(info.value)
    assert "BBT_API_KEY" in message
    assert "environment" in message
    assert "BBT_BASE_URL" in message
    assert ".env" in message
    assert "same place" in message
    assert "env-key-3b7d" not in message
    with pytest.raises(ConfigurationError):
        Client()


@pytest.mark.usefixtures("no_env")
def test_a_dotenv_key_does_not_go_to_the_environment_s_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dotenv(tmp_path / ".env", api_key="dotenv-key-9c2e")
    monkeypatch.setenv("BBT_BASE_URL", "http://from-env:2")
    with pytest.raises(ConfigurationError, match="same place") as info:
        ClientSettings()
    assert "dotenv-key-9c2e" not in str(info.value)


@pytest.mark.usefixtures("no_env")
def test_an_argument_key_does_not_go_to_a_dotenv_url(tmp_path: Path) -> None:
    _dotenv(tmp_path / ".env", base_url="http://attacker.example")
    with pytest.raises(ConfigurationError, match="same place"):
        ClientSettings(api_key="arg-key")


@pytest.mark.usefixtures("no_env")
def test_key_and_url_from_the_dotenv_are_fine(tmp_path: Path) -> None:
    _dotenv(tmp_path / ".env", base_url="http://from-dotenv:1", api_key="dotenv-key")
    s = ClientSettings()
    assert s.base_url == "http://from-dotenv:1"
    assert s.api_key is not None


@pytest.mark.usefixtures("no_env")
def test_key_and_url_from_the_environment_are_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A .env with both is shadowed entirely: both come from the environment.
    _dotenv(tmp_path / ".env", base_url="http://from-dotenv:1", api_key="dotenv-key")
    monkeypatch.setenv("BBT_BASE_URL", "http://from-env:2")
    monkeypatch.setenv("BBT_API_KEY", "env-key")
    s = ClientSettings()
    assert s.base_url == "http://from-env:2"
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "env-key"


@pytest.mark.usefixtures("no_env")
def test_an_explicit_url_may_take_a_key_from_anywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The caller chose where the key goes (Client(base_url=...), --base-url).
    _dotenv(tmp_path / ".env", base_url="http://from-dotenv:1", api_key="dotenv-key")
    assert ClientSettings(base_url="http://from-args:3").base_url == "http://from-args:3"
    monkeypatch.setenv("BBT_API_KEY", "env-key")
    s = ClientSettings(base_url="http://from-args:3", env_file=None)
    assert s.api_key is not None
    assert s.api_key.get_secret_value() == "env-key"
    # Arguments for both override everything, whatever the other sources mix.
    _dotenv(tmp_path / ".env", base_url="http://attacker.example")
    s = ClientSettings(base_url="http://from-args:3", api_key="arg-key")
    assert (s.base_url, s.api_key.get_secret_value() if s.api_key else None) == (
        "http://from-args:3",
        "arg-key",
    )


@pytest.mark.usefixtures("no_env")
def test_a_url_with_no_key_or_a_key_with_no_url_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dotenv(tmp_path / ".env", base_url="http://from-dotenv:1")
    assert ClientSettings().api_key is None  # nothing to send anywhere
    _dotenv(tmp_path / ".env", model="m")
    monkeypatch.setenv("BBT_API_KEY", "env-key")
    assert ClientSettings().base_url is None  # the embedded server gets no key anyway


@pytest.mark.usefixtures("no_env")
def test_bbt_tune_refuses_the_mix_in_one_line_with_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from bbt.cli import app

    _dotenv(tmp_path / ".env", base_url="http://attacker.example")
    monkeypatch.setenv("BBT_API_KEY", "env-key-cli-51aa")
    monkeypatch.setenv("BBT_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(app, ["tune", "--task", "mock", "--out", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("error: ")
    assert "same place" in lines[0]
    assert "Traceback" not in r.output
    assert "env-key-cli-51aa" not in r.output
