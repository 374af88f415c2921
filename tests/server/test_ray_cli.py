"""``bbt serve --replicas`` wiring, the ``serve run`` builder's arguments, and Ray staying
optional: nothing here starts Ray (tests/server/test_ray_serve.py does, once)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from bbt.cli import app
from bbt.errors import ConfigurationError
from bbt.server import ray_serve
from bbt.server.ray_app import parse_args

runner = CliRunner()


def test_the_client_the_tuner_and_bbt_serve_never_import_ray() -> None:
    code = (
        "import sys, bbt, bbt.client, bbt.tuner, bbt.cli, bbt.cli._serve, bbt.server.app; "
        "sys.exit(1 if 'ray' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_replicas_without_ray_is_a_one_line_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    result = runner.invoke(app, ["serve", "--replicas", "2"])
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [
        "error: scaling out needs Ray Serve (ray is missing): pip install 'bbt[ray]'"
    ]


def test_ray_address_needs_replicas() -> None:
    result = runner.invoke(app, ["serve", "--ray-address", "auto"])
    assert result.exit_code != 0
    assert "error: --ray-address needs --replicas" in result.output


def test_replicas_pass_the_model_options_to_every_replica(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("ray.serve")
    seen: dict[str, Any] = {}

    def record(spec: Any, options: Any, **kw: Any) -> None:
        seen.update(spec=spec, options=options, **kw)

    monkeypatch.setattr(ray_serve, "run_blocking", record)
    result = runner.invoke(
        app,
        ["serve", "--replicas", "3", "--threads", "2", "--dtype", "float32", "--port", "0"],
    )
    assert result.exit_code != 0
    assert "--replicas needs a fixed --port" in result.output
    result = runner.invoke(
        app,
        ["serve", "--replicas", "3", "--threads", "2", "--ray-address", "auto", "--port", "18431"],
    )
    assert result.exit_code == 0, result.output
    assert seen["spec"].kind == "hf"
    assert seen["spec"].options == {
        "head": "auto",
        "dtype": "auto",
        "device": "auto",
        "num_threads": 2,
    }
    assert seen["options"].replicas == 3
    assert seen["options"].num_cpus == 2.0
    assert seen["address"] == "auto"
    assert seen["port"] == 18431


def test_builder_arguments() -> None:
    spec, opts = parse_args(
        {"backend": "mock", "compute_ms": "150", "replicas": "2", "num_gpus": "0.5"}
    )
    assert (spec.kind, spec.options) == ("mock", {"compute_ms": 150.0})
    assert (opts.replicas, opts.num_gpus, opts.batching) == (2, 0.5, True)
    deploy = opts.deployment_options()
    assert deploy["num_replicas"] == 2
    assert deploy["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.5}
    _, auto = parse_args({"min_replicas": "1", "max_replicas": "4", "batching": "false"})
    assert auto.batching is False
    scaling = auto.deployment_options()["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 4)
    assert "num_replicas" not in auto.deployment_options()
    spec, _ = parse_args({"model": "/m", "threads": "4"})
    assert spec.options == {"model_path": "/m", "num_threads": 4}
    with pytest.raises(ConfigurationError, match="unknown argument 'hidden_size'"):
        parse_args({"hidden_size": "8"})
    with pytest.raises(ConfigurationError, match="replicas='two' is not a valid int"):
        parse_args({"replicas": "two"})
    with pytest.raises(ConfigurationError, match="max_replicas"):
        parse_args({"min_replicas": "3", "max_replicas": "2"})


def test_replica_settings_let_concurrent_requests_reach_the_batcher() -> None:
    on = ray_serve.replica_settings(ray_serve.ReplicaOptions(max_ongoing_requests=8))
    off = ray_serve.replica_settings(ray_serve.ReplicaOptions(batching=False))
    assert (on.max_concurrency, on.max_queue) == (8, 8)
    assert off.max_concurrency == 1


def test_sigterm_stops_a_ray_deployment_like_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import signal
    import threading

    calls: list[Any] = []
    monkeypatch.setattr(ray_serve, "start", lambda *a, **kw: calls.append("start") or True)
    monkeypatch.setattr(ray_serve, "stop", lambda started: calls.append(("stop", started)))
    before = signal.getsignal(signal.SIGTERM)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM))
    timer.start()
    ray_serve.run_blocking(
        ray_serve.BackendSpec("mock"),
        ray_serve.ReplicaOptions(),
        host="127.0.0.1",
        port=8000,
        address=None,
        say=calls.append,
    )
    timer.join()
    assert calls[0] == "start"
    assert calls[-2:] == ["stopping Ray Serve ...", ("stop", True)]
    assert signal.getsignal(signal.SIGTERM) == before


def test_replicas_that_fail_to_start_are_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pytest.importorskip("ray.serve")
    from ray import serve

    stopped: list[bool] = []

    class FakeRay:
        @staticmethod
        def is_initialized() -> bool:
            return True

    def fail_run(*_a: Any, **_kw: Any) -> None:
        raise RuntimeError("Deploying application bbt failed: Failed to update the deployments")

    monkeypatch.setattr(ray_serve, "require_ray", lambda: (FakeRay, serve))
    monkeypatch.setattr(serve, "start", lambda **_kw: None)
    monkeypatch.setattr(serve, "run", fail_run)
    monkeypatch.setattr(ray_serve, "build_app", lambda *_a: None)
    monkeypatch.setattr(ray_serve, "stop", stopped.append)
    with pytest.raises(ConfigurationError, match="could not start the bbt replicas") as info:
        ray_serve.start(ray_serve.BackendSpec("mock"), ray_serve.ReplicaOptions())
    assert "Failed to update the deployments" in str(info.value)
    assert "\n" not in str(info.value)
    assert stopped == [False]


def test_sessions_are_offered_only_where_one_replica_serves_them() -> None:
    # A session lives in one replica's memory: with several replicas behind Ray's router its
    # requests would land on replicas that never opened it.
    def offered(**kw: Any) -> bool:
        return ray_serve.replica_settings(ray_serve.ReplicaOptions(**kw)).sessions

    assert offered(replicas=1)
    assert not offered(replicas=2)
    assert not offered(replicas=1, max_replicas=4)
    assert offered(replicas=1, max_replicas=1)
    assert offered(replicas=2, sessions=True)  # sticky routing in front: the user's call
    assert not offered(replicas=1, sessions=False)
    _, opts = parse_args({"backend": "mock", "replicas": "2", "sessions": "on"})
    assert opts.offers_sessions()


def test_replicas_get_the_session_options(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ray.serve")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(
        ray_serve, "run_blocking", lambda spec, options, **kw: seen.update(o=options)
    )
    args = ["serve", "--replicas", "2", "--port", "18432", "--no-sessions"]
    args += ["--max-sessions-per-key", "2", "--session-idle-timeout", "30"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    settings = ray_serve.replica_settings(seen["o"])
    assert settings.sessions is False
    assert settings.max_sessions_per_key == 2
    assert settings.session_idle_timeout_s == 30


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--registry", "r.sqlite3"], "--registry is not available with --replicas"),
        (["--max-queue", "4"], "--max-queue is not used with --replicas"),
    ],
)
def test_options_replicas_cannot_honour_are_one_error_line(
    flag: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were the flag accepted, the deployment would start: it must not get that far.
    monkeypatch.setattr(ray_serve, "run_blocking", lambda *a, **kw: None)
    monkeypatch.setattr(ray_serve, "require_ray", lambda: (None, None))
    result = runner.invoke(app, ["serve", "--replicas", "2", "--port", "18433", *flag])
    assert result.exit_code != 0
    assert f"error: {message}" in result.output
    assert "Traceback" not in result.output


def test_a_causal_model_directory_gets_the_causal_backend_in_a_replica(tmp_path: Any) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bbt.server.hf_causal import HFCausalBackend
    from bbt.testing.tiny_models import build_tiny_causal_lm

    path = build_tiny_causal_lm(tmp_path / "gpt2", "gpt2")
    spec = ray_serve.BackendSpec(
        "hf", {"model_path": str(path), "head": "auto", "dtype": "float32"}
    )
    backend = spec.build()
    try:
        assert isinstance(backend, HFCausalBackend)
        assert backend.info.kind == "causal_lm"
    finally:
        backend.close()
