"""ServerSettings: keys from the environment and from a file; validation fails fast."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bbt.errors import ConfigurationError
from bbt.server import ServerSettings
from bbt.server._connections import ConnectionLimits


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "API_KEYS",
        "API_KEY_FILE",
        "MAX_BODY_BYTES",
        "MAX_CONCURRENCY",
        "MAX_QUEUE",
        "MAX_CONNECTIONS",
        "KEEP_ALIVE_S",
        "MAX_CONNECTIONS_PER_CLIENT",
        "HEADER_TIMEOUT_S",
        "BODY_TIMEOUT_S",
    ):
        monkeypatch.delenv(f"BBT_SERVER_{name}", raising=False)


def _keys(s: ServerSettings) -> list[str]:
    return [k.get_secret_value() for k in s.api_keys]


def test_defaults() -> None:
    s = ServerSettings()
    assert s.api_keys == []
    assert s.max_body_bytes is None
    assert s.max_concurrency == 1


def test_keys_from_env_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BBT_SERVER_API_KEYS", "k1, k2,,")
    monkeypatch.setenv("BBT_SERVER_MAX_CONCURRENCY", "4")
    s = ServerSettings()
    assert _keys(s) == ["k1", "k2"]
    assert s.max_concurrency == 4
    assert "k1" not in repr(s)


def test_keys_from_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    f = tmp_path / "keys"
    f.write_text("# team keys\nalpha\n\n  beta  \n", encoding="utf-8")
    monkeypatch.setenv("BBT_SERVER_API_KEYS", "gamma")
    monkeypatch.setenv("BBT_SERVER_API_KEY_FILE", str(f))
    assert _keys(ServerSettings()) == ["gamma", "alpha", "beta"]


def test_missing_key_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read API key file"):
        ServerSettings(api_key_file=tmp_path / "absent")


def test_bad_values_fail_fast() -> None:
    with pytest.raises(ValidationError):
        ServerSettings(max_concurrency=0)
    with pytest.raises(ValidationError):
        ServerSettings(max_body_bytes=0)


def _guard_limits(s: ServerSettings) -> ConnectionLimits:
    options = s.uvicorn_options()
    # The bounds live in the guarded protocol: uvicorn's limit_concurrency would count
    # idle sockets and answer 503 to everyone once enough of them were open.
    assert "limit_concurrency" not in options
    assert options["ws"] == "none"
    limits = options["http"].limits
    assert isinstance(limits, ConnectionLimits)
    return limits


def test_queue_and_connection_limits_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    s = ServerSettings()
    assert s.max_queue == 16
    assert s.uvicorn_options()["timeout_keep_alive"] == 15
    assert _guard_limits(s) == ConnectionLimits(
        max_connections=128, max_per_client=32, header_timeout_s=10.0
    )
    monkeypatch.setenv("BBT_SERVER_MAX_QUEUE", "100")
    monkeypatch.setenv("BBT_SERVER_MAX_CONCURRENCY", "2")
    monkeypatch.setenv("BBT_SERVER_KEEP_ALIVE_S", "30")
    s = ServerSettings()
    assert s.max_queue == 100
    # The default connection limit grows with the queue, so the queue bound (503 with
    # Retry-After and an envelope) is met before the connection bound.
    assert s.uvicorn_options()["timeout_keep_alive"] == 30
    assert _guard_limits(s).max_connections == 204
    assert _guard_limits(s).max_per_client == 51
    monkeypatch.setenv("BBT_SERVER_MAX_CONNECTIONS", "500")
    assert _guard_limits(ServerSettings()).max_connections == 500


def test_connection_guard_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BBT_SERVER_HEADER_TIMEOUT_S", "2.5")
    monkeypatch.setenv("BBT_SERVER_BODY_TIMEOUT_S", "7")
    monkeypatch.setenv("BBT_SERVER_MAX_CONNECTIONS_PER_CLIENT", "8")
    s = ServerSettings()
    assert s.body_timeout_s == 7.0
    assert _guard_limits(s) == ConnectionLimits(
        max_connections=128, max_per_client=8, header_timeout_s=2.5
    )
    # A per-client bound above the total is the total.
    assert ServerSettings(max_connections_per_client=1000).per_client_connection_limit == 128
    for name, value in (
        ("header_timeout_s", 0),
        ("body_timeout_s", -1),
        ("body_timeout_s", 3601),
        ("max_connections_per_client", 0),
    ):
        with pytest.raises(ValidationError):
            ServerSettings(**{name: value})  # type: ignore[arg-type]


def test_bad_queue_settings_fail_fast() -> None:
    with pytest.raises(ValidationError):
        ServerSettings(max_queue=-1)
    with pytest.raises(ValidationError):
        ServerSettings(keep_alive_s=0)
    with pytest.raises(ValidationError, match="must exceed max_concurrency"):
        ServerSettings(max_queue=10, max_connections=11)
    assert ServerSettings(max_queue=0, max_connections=2).connection_limit == 2
