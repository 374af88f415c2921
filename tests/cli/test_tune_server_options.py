"""``--server-dtype/--server-threads/--server-device``: straight to the embedded server, and
refused where another service answers."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import bbt.server.embedded
from bbt.cli import _tune, app
from bbt.errors import ConfigurationError

runner = CliRunner()
SMALL = ["--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]
BACKEND_SAYS = "dtype must be one of ['bfloat16', 'float16', 'float32'], got 'float64'"


@pytest.fixture
def embedded_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Replace the embedded server by one that records its options and fails as the
    backend does on a bad value (so no model is loaded)."""
    monkeypatch.chdir(tmp_path)  # no .env from the developer's checkout
    for var in ("BBT_BASE_URL", "BBT_API_KEY", "BBT_MODEL", *_tune.SERVER_ENV.values()):
        monkeypatch.delenv(var, raising=False)
    calls: list[dict[str, Any]] = []

    @contextmanager
    def fake(model: Any = None, **options: Any) -> Iterator[str]:
        calls.append({k: v for k, v in options.items() if k != "say"})
        raise ConfigurationError(BACKEND_SAYS)
        yield "http://127.0.0.1:9"  # pragma: no cover - never reached

    monkeypatch.setattr(bbt.server.embedded, "embedded_server", fake)
    return calls


def _one_error_line(output: str, message: str) -> None:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines[-1] == f"error: {message}", output
    assert "Traceback" not in output
    assert sum(line.startswith("error:") for line in lines) == 1


def test_flags_reach_the_embedded_server_unchanged(embedded_calls: list[dict[str, Any]]) -> None:
    args = ["tune", "--task", "mock", "--budget", "16", *SMALL]
    args += ["--server-dtype", "bfloat16", "--server-threads", "3", "--server-device", "cpu"]
    r = runner.invoke(app, args)
    assert embedded_calls == [{"dtype": "bfloat16", "num_threads": 3, "device": "cpu"}]
    # The backend's own validation error is the command's one line.
    assert r.exit_code == 2
    _one_error_line(r.output, BACKEND_SAYS)


def test_no_flag_leaves_the_embedded_defaults_alone(embedded_calls: list[dict[str, Any]]) -> None:
    runner.invoke(app, ["tune", "--task", "mock", "--budget", "16", *SMALL])
    assert embedded_calls == [{}]


def test_environment_sets_them_too(
    embedded_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBT_EMBEDDED_DTYPE", "float32")
    monkeypatch.setenv("BBT_EMBEDDED_THREADS", "2")
    runner.invoke(app, ["tune", "--task", "mock", "--budget", "16", *SMALL])
    assert embedded_calls == [{"dtype": "float32", "num_threads": 2}]


def test_device_auto_picks_cuda_only_where_torch_sees_one(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _tune._resolve_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _tune._resolve_device("auto") == "cpu"
    assert _tune._resolve_device("cuda") == "cuda"  # an explicit choice is the backend's to check


@pytest.mark.parametrize(
    ("where", "answers"),
    [
        (
            ["--base-url", "http://127.0.0.1:9"],
            "the service at the configured URL (--base-url, BBT_BASE_URL or .env)",
        ),
        (["--mock"], "the in-process mock"),
    ],
)
def test_flags_are_refused_where_another_service_answers(
    embedded_calls: list[dict[str, Any]], where: list[str], answers: str
) -> None:
    r = runner.invoke(
        app,
        ["tune", "--task", "mock", "--budget", "16", *SMALL, *where, "--server-dtype", "float32"],
    )
    assert r.exit_code == 2
    _one_error_line(
        r.output,
        "--server-dtype only applies to the embedded server, which this command does not "
        f"start: {answers} answers, with its own settings",
    )
    assert embedded_calls == []


def test_the_environment_is_not_refused_where_another_service_answers(
    embedded_calls: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A user who exports BBT_EMBEDDED_DTYPE for their laptop can still tune against a URL.
    monkeypatch.setenv("BBT_EMBEDDED_DTYPE", "float32")
    r = runner.invoke(
        app, ["tune", "--task", "mock", "--budget", "16", *SMALL, "--mock", "--out", "run"]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "run" / "manifest.json").exists()


def test_eval_and_predict_pass_them_and_refuse_them_alike(
    embedded_calls: list[dict[str, Any]], tmp_path: Path
) -> None:
    r = runner.invoke(app, ["tune", "--task", "mock", "--budget", "16", *SMALL, "--mock"])
    run = next((tmp_path / "runs").iterdir())
    # The run was made against the in-process mock, so predict uses it again: flags refused.
    r = runner.invoke(app, ["predict", str(run), "vate", "--server-threads", "2"])
    assert r.exit_code == 2
    assert "--server-threads only applies to the embedded server" in r.output
    # --no-mock starts the embedded server: the flags go to it.
    r = runner.invoke(app, ["predict", str(run), "vate", "--no-mock", "--server-threads", "2"])
    r = runner.invoke(
        app, ["eval", str(run), "--data", "x.tsv", "--no-mock", "--server-dtype", "float16"]
    )
    assert embedded_calls == [{"num_threads": 2}, {"dtype": "float16"}]
    _one_error_line(r.output, BACKEND_SAYS)


def test_resume_passes_them_too(embedded_calls: list[dict[str, Any]], tmp_path: Path) -> None:
    r = runner.invoke(app, ["tune", "--task", "mock", "--budget", "16", *SMALL, "--mock"])
    run = next((tmp_path / "runs").iterdir())
    # Made against the in-process mock: resumed against it again, so the flags are refused.
    r = runner.invoke(app, ["tune", "--resume", str(run), "--server-device", "cuda"])
    assert r.exit_code == 2
    assert "--server-device only applies to the embedded server" in r.output
    # A run made against the embedded server is resumed against it: the flags go to it.
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["service"] = {"kind": "embedded", "base_url": "http://127.0.0.1:9"}
    (run / "manifest.json").write_text(json.dumps(manifest))
    r = runner.invoke(app, ["tune", "--resume", str(run), "--server-dtype", "float32"])
    assert embedded_calls == [{"dtype": "float32"}]
    assert r.exit_code == 2
    assert f"error: {BACKEND_SAYS}" in r.output.splitlines()
    assert "Traceback" not in r.output


def test_a_bad_value_from_the_real_backend_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The real embedded server with a dtype HFBackend rejects (before loading any model)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("uvicorn")
    monkeypatch.chdir(tmp_path)
    for var in ("BBT_BASE_URL", *_tune.SERVER_ENV.values()):
        monkeypatch.delenv(var, raising=False)
    r = runner.invoke(
        app, ["tune", "--task", "mock", "--budget", "16", *SMALL, "--server-dtype", "float64"]
    )
    assert r.exit_code == 2
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("error: "), r.output
    assert "float64" in last
    assert "Traceback" not in r.output
    assert not (tmp_path / "runs").exists()
