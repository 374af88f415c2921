"""``bbt serve`` / ``bbt mock-server`` start-up: the no-key WARNING off loopback, the queue
bound and uvicorn's connection limit and keep-alive (issue 8, defect 7). uvicorn never runs:
``Server.run`` is replaced by a recorder, and ``bbt serve`` gets a mock in place of the model."""

from __future__ import annotations

from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from bbt.cli import app
from bbt.cli._serve import exposure_warning
from bbt.server import MockBackend
from bbt.server._connections import ConnectionLimits, GuardedProtocol

runner = CliRunner()


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "API_KEYS",
        "API_KEY_FILE",
        "MAX_QUEUE",
        "MAX_CONNECTIONS",
        "MAX_CONNECTIONS_PER_CLIENT",
        "KEEP_ALIVE_S",
        "HEADER_TIMEOUT_S",
        "BODY_TIMEOUT_S",
    ):
        monkeypatch.delenv(f"BBT_SERVER_{name}", raising=False)


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The uvicorn configs the commands would have served with (nothing is served)."""
    configs: list[Any] = []

    def record(self: uvicorn.Server, sockets: Any = None) -> None:
        configs.append(self.config)

    monkeypatch.setattr(uvicorn.Server, "run", record)
    return configs


class _FakeHF(MockBackend):
    """Stands in for HFBackend in ``bbt serve``: same attributes, no model to load."""

    head_name = "tied"
    compute_dtype = "float32"
    device = "cpu"
    compute_reason = "float32: a stand-in, no model"

    def __init__(self, model: object = None, **_: object) -> None:
        super().__init__()


@pytest.fixture
def fake_model(monkeypatch: pytest.MonkeyPatch) -> None:
    import bbt.server.hf
    import bbt.server.hf_causal  # first, so its class derives from the real HFBackend

    monkeypatch.setattr(bbt.server.hf, "HFBackend", _FakeHF)


@pytest.mark.parametrize(
    ("host", "keys", "warns"),
    [
        ("0.0.0.0", 0, True),
        ("::", 0, True),
        ("192.168.1.20", 0, True),
        ("0.0.0.0", 1, False),
        ("127.0.0.1", 0, False),
        ("127.0.0.2", 0, False),
        ("::1", 0, False),
    ],
)
def test_exposure_warning_decision(host: str, keys: int, warns: bool) -> None:
    message = exposure_warning("bbt serve", host, 8000, keys)
    assert (message is not None) == warns
    if message is not None:
        assert message.startswith("WARNING: bbt serve is listening on")
        assert "NO API KEY" in message
        assert "BBT_SERVER_API_KEYS" in message


@pytest.mark.parametrize("command", [["mock-server"], ["serve"]])
def test_no_key_off_loopback_warns_loudly(
    command: list[str], started: list[Any], fake_model: None
) -> None:
    result = runner.invoke(app, [*command, "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "WARNING" in result.output
    assert "NO API KEY" in result.output
    assert "every interface" in result.output
    assert len(started) == 1


@pytest.mark.parametrize("command", [["mock-server"], ["serve"]])
def test_loopback_or_a_key_does_not_warn(
    command: list[str], started: list[Any], fake_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = runner.invoke(app, [*command, "--host", "127.0.0.1", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output
    monkeypatch.setenv("BBT_SERVER_API_KEYS", "sk-test-key-1")
    result = runner.invoke(app, [*command, "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output
    assert "sk-test-key-1" not in result.output


@pytest.mark.parametrize("command", [["mock-server"], ["serve"]])
def test_uvicorn_gets_a_connection_limit_and_keep_alive(
    command: list[str], started: list[Any], fake_model: None
) -> None:
    result = runner.invoke(app, [*command, "--port", "0", "--max-queue", "100"])
    assert result.exit_code == 0, result.output
    (config,) = started
    # The connection bound is the guarded protocol's, not uvicorn's limit_concurrency
    # (which idle sockets exhausted: issue 18).
    assert config.limit_concurrency is None
    assert issubclass(config.http, GuardedProtocol)
    assert config.http.limits.max_connections == 2 * (1 + 100)
    assert config.ws == "none"
    assert config.timeout_keep_alive == 15
    assert config.app.state.scheduler.max_queue == 100


@pytest.mark.parametrize("command", [["mock-server"], ["serve"]])
def test_connection_timeouts_reach_uvicorn_and_the_app(
    command: list[str],
    started: list[Any],
    fake_model: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BBT_SERVER_HEADER_TIMEOUT_S", "3")
    monkeypatch.setenv("BBT_SERVER_BODY_TIMEOUT_S", "20")
    monkeypatch.setenv("BBT_SERVER_MAX_CONNECTIONS_PER_CLIENT", "5")
    result = runner.invoke(app, [*command, "--port", "0"])
    assert result.exit_code == 0, result.output
    (config,) = started
    assert config.http.limits == ConnectionLimits(
        max_connections=128, max_per_client=5, header_timeout_s=3.0
    )
    assert config.app.state.core.settings.body_timeout_s == 20.0


@pytest.mark.parametrize("command", [["mock-server"], ["serve"]])
def test_bad_timeout_is_a_clear_error(
    command: list[str], started: list[Any], fake_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBT_SERVER_HEADER_TIMEOUT_S", "0")
    result = runner.invoke(app, [*command, "--port", "0"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ")
    assert "Traceback" not in result.output
    assert started == []


def test_mock_server_compute_ms_reaches_the_backend(started: list[Any]) -> None:
    result = runner.invoke(app, ["mock-server", "--port", "0", "--compute-ms", "250"])
    assert result.exit_code == 0, result.output
    (config,) = started
    assert config.app.state.core.backend.compute_ms == 250.0


@pytest.mark.parametrize("command", [["mock-server"], ["serve"]])
def test_bad_connection_limit_is_a_clear_error(
    command: list[str], started: list[Any], fake_model: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBT_SERVER_MAX_CONNECTIONS", "5")
    result = runner.invoke(app, [*command, "--port", "0", "--max-queue", "10"])
    assert result.exit_code == 2
    assert result.output.startswith("error: ")
    assert "must exceed" in result.output
    assert "Traceback" not in result.output
    assert started == []
