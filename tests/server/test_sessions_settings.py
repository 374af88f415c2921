"""Session limits reach the app from ``bbt serve`` flags and ``BBT_SERVER_SESSION*``."""

from __future__ import annotations

import os
from typing import Any

import pytest
import uvicorn
from typer.testing import CliRunner

from bbt.cli import app
from bbt.protocol import FEATURES_CAPABILITY
from bbt.server import MockBackend, ServerSettings
from bbt.server.app import create_app

runner = CliRunner()


class _FakeHF(MockBackend):
    head_name = "tied"
    compute_dtype = "float32"
    device = "cpu"
    compute_reason = "float32: a stand-in, no model"

    def __init__(self, model: object = None, **_: object) -> None:
        super().__init__()


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    import bbt.server.hf

    for name in list(os.environ):
        if name.startswith("BBT_SERVER_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(bbt.server.hf, "HFBackend", _FakeHF)
    configs: list[Any] = []
    monkeypatch.setattr(
        uvicorn.Server, "run", lambda self, sockets=None: configs.append(self.config)
    )
    return configs


def test_serve_flags_set_the_session_limits(started: list[Any]) -> None:
    args = [
        "serve",
        "--port",
        "0",
        "--session-idle-timeout",
        "90",
        "--max-sessions-per-key",
        "2",
        "--max-session-memory",
        "300",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    (config,) = started
    limits = config.app.state.core.sessions.limits
    assert (limits.idle_timeout_s, limits.max_per_key) == (90, 2)
    assert limits.max_total_bytes == 300 * 1024 * 1024


def test_serve_can_turn_sessions_off(started: list[Any]) -> None:
    result = runner.invoke(app, ["serve", "--port", "0", "--no-sessions", "--registry", "none"])
    assert result.exit_code == 0, result.output
    (config,) = started
    assert config.app.state.core.sessions is None
    assert config.app.state.core.info.capabilities == [FEATURES_CAPABILITY]


def test_bad_session_flag_is_a_one_line_error(started: list[Any]) -> None:
    result = runner.invoke(app, ["serve", "--port", "0", "--max-sessions-per-key", "0"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert started == []


def test_environment_sets_the_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BBT_SERVER_SESSION_IDLE_TIMEOUT_S", "42")
    monkeypatch.setenv("BBT_SERVER_MAX_SESSION_BYTES", "123456789")
    monkeypatch.setenv("BBT_SERVER_SESSIONS", "true")
    core = create_app(MockBackend(), ServerSettings(api_keys=[])).state.core
    assert core.sessions.limits.idle_timeout_s == 42
    assert core.sessions.limits.max_total_bytes == 123456789


def test_the_torch_projector_matches_numpy_within_float32_rounding() -> None:
    pytest.importorskip("torch")
    import numpy as np

    from bbt.protocol.projection import Projection, ProjectionRecipe
    from bbt.server.sessions import torch_projector

    recipe = ProjectionRecipe(seed=2, n_tokens=4, hidden_size=32, dim=20, embedding_std=0.05)
    projection = Projection(recipe)
    p0 = np.random.default_rng(1).standard_normal((4, 32)).astype(np.float32) * 0.05
    z = np.random.default_rng(2).standard_normal((5, 20)).astype(np.float32)
    got = torch_projector("cpu")(projection.matrix, p0)(z)
    assert got.shape == (5, 4, 32)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, projection.project(z, p0), rtol=1e-5, atol=1e-6)


def test_a_backend_on_cuda_gets_the_torch_projector(monkeypatch: pytest.MonkeyPatch) -> None:
    from bbt.server import sessions

    made: list[str] = []
    real = sessions.torch_projector

    def fake(device: str) -> Any:
        made.append(device)
        return real("cpu")

    monkeypatch.setattr(sessions, "torch_projector", fake)
    backend = MockBackend()
    backend.device = "cuda:0"  # type: ignore[attr-defined]
    sessions.session_host(backend, backend.info, ServerSettings().session_limits())
    assert made == ["cuda:0"]
