"""The tuner uses projection sessions when the service offers them, with bitwise the
results of full prompts: on the mock, with an eviction mid-run, across a resume on a
restarted server; and falls back to full prompts on a server without sessions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import Client, LocalClient
from bbt.errors import ConfigurationError
from bbt.server import MockBackend, ServerSettings
from bbt.server._core import ServiceCore
from bbt.testing import CoreTransport
from bbt.tuner import Example, Task, TuneResult, resume, tune
from bbt.tuner.evaluator import ProjectingEvaluator
from bbt.tuner.sessions import SessionEvaluator
from bbt.tuner.tuner import GenerationRecord, Tuner

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]


def _core(**settings: Any) -> ServiceCore:
    return ServiceCore(MockBackend(hidden_size=H), ServerSettings(api_keys=[], **settings))


def _client(core: ServiceCore) -> Client:
    return Client("http://bbt.test", transport=CoreTransport(core), env_file=None)


def _history(result: TuneResult) -> list[dict[str, Any]]:
    assert result.run_dir is not None
    import json

    lines = (result.run_dir / "history.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row.pop("wall_time")
    return rows


def _same(a: TuneResult, b: TuneResult) -> None:
    assert _history(a) == _history(b)
    np.testing.assert_array_equal(a.prompt, b.prompt)
    np.testing.assert_array_equal(a.z, b.z)
    assert a.metrics == b.metrics


def _run(tmp: Path, name: str, service: Any, task: Task, split: Split, **cfg: Any) -> TuneResult:
    return tune(service, task, *split, small_config(**cfg), run_dir=tmp / name, plot=False)


def test_sessions_give_bitwise_the_history_of_full_prompts(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    full_core, session_core = _core(), _core()
    with _client(full_core) as c_full, _client(session_core) as c_sess:
        full = _run(tmp_path, "full", c_full, mock_task, split, sessions="off")
        sess = _run(tmp_path, "sess", c_sess, mock_task, split, sessions="on")
    _same(full, sess)
    assert full_core.sessions is not None
    assert len(full_core.sessions) == 0  # "off" opened nothing
    # The session run sent z (4 d bytes a candidate), not prompts (4 n H).
    assert sess.usage["bytes_sent"] < full.usage["bytes_sent"] / 2
    assert session_core.sessions is not None
    assert len(session_core.sessions) == 0  # closed at the end


def test_auto_uses_sessions_when_offered_and_full_prompts_otherwise(
    mock_task: Task, split: Split
) -> None:
    offered = _client(_core())
    assert isinstance(Tuner(offered, mock_task, *split, small_config()).evaluator, SessionEvaluator)
    without = _client(_core(sessions=False))
    tuner = Tuner(without, mock_task, *split, small_config())
    assert isinstance(tuner.evaluator, ProjectingEvaluator)
    # In-process, a session saves nothing: auto projects locally, on uses the session path.
    local = LocalClient(MockBackend(hidden_size=H))
    auto = Tuner(local, mock_task, *split, small_config())
    assert isinstance(auto.evaluator, ProjectingEvaluator)
    on = Tuner(local, mock_task, *split, small_config(sessions="on"))
    assert isinstance(on.evaluator, SessionEvaluator)
    off = Tuner(_client(_core()), mock_task, *split, small_config(sessions="off"))
    assert isinstance(off.evaluator, ProjectingEvaluator)


def test_local_client_sessions_give_bitwise_the_same_run(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    local = LocalClient(MockBackend(hidden_size=H))
    full = _run(tmp_path, "full", local, mock_task, split, sessions="off")
    sess = _run(tmp_path, "sess", local, mock_task, split, sessions="on")
    _same(full, sess)


def test_on_against_a_server_without_sessions_is_a_clear_error(
    mock_task: Task, split: Split
) -> None:
    with pytest.raises(ConfigurationError, match="sessions"):
        Tuner(_client(_core(sessions=False)), mock_task, *split, small_config(sessions="on"))


def test_a_session_evicted_mid_run_gives_an_identical_result(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    core = _core()
    evictions = []

    def evict(rec: GenerationRecord) -> None:
        assert core.sessions is not None
        evictions.append(core.sessions.evict_all())

    with _client(_core()) as c_ref, _client(core) as c:
        ref = _run(tmp_path, "ref", c_ref, mock_task, split, sessions="off")
        evicted = tune(
            c,
            mock_task,
            *split,
            small_config(sessions="on"),
            run_dir=tmp_path / "ev",
            callbacks=[evict],
            plot=False,
        )
    _same(ref, evicted)
    assert sum(evictions) >= 3  # it really was evicted, and reopened, again and again


def test_an_idle_timeout_between_generations_gives_an_identical_result(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    core = _core(session_idle_timeout_s=60)
    assert core.sessions is not None
    now = [0.0]
    core.sessions._clock = lambda: now[0]

    def a_minute_passes(rec: GenerationRecord) -> None:
        now[0] += 61  # every session expires before the next generation's call

    with _client(_core()) as c_ref, _client(core) as c:
        ref = _run(tmp_path, "ref", c_ref, mock_task, split, sessions="off")
        expired = tune(
            c,
            mock_task,
            *split,
            small_config(sessions="on"),
            run_dir=tmp_path / "idle",
            callbacks=[a_minute_passes],
            plot=False,
        )
    _same(ref, expired)
    assert core.sessions.evicted >= 3


def test_resume_reopens_the_session_on_a_restarted_server(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    def stop(rec: GenerationRecord) -> None:
        if rec.generation >= 2:
            raise KeyboardInterrupt

    with _client(_core()) as c_ref:
        ref = _run(tmp_path, "ref", c_ref, mock_task, split, sessions="off", budget=80)
    first = _core()
    with _client(first) as c, pytest.raises(KeyboardInterrupt):
        tune(
            c,
            mock_task,
            *split,
            small_config(sessions="on", budget=80),
            run_dir=tmp_path / "run",
            callbacks=[stop],
            plot=False,
        )
    restarted = _core()  # a new server process: the first one's sessions are gone
    with _client(restarted) as c2:
        opened: list[int] = []
        original = restarted.open_session

        def counting(*a: Any) -> Any:
            opened.append(1)
            return original(*a)

        restarted.open_session = counting  # type: ignore[method-assign]
        resumed = resume(tmp_path / "run", c2, plot=False)
    assert opened  # the resumed run opened its session anew from the manifest's recipe
    _same(ref, resumed)


def test_bbt_tune_takes_sessions_and_refuses_a_bad_value(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from bbt.cli import app

    runner = CliRunner()
    small = ["--task", "mock", "--mock", "--mock-hidden-size", "32", "-n", "4", "-d", "8"]
    small += ["--popsize", "4", "--budget", "16", "--eval-every", "8", "--no-plot", "-q"]
    bad = runner.invoke(app, ["tune", *small, "--sessions", "sometimes"])
    assert bad.exit_code != 0
    assert bad.output.startswith("error: ")
    assert "sessions must be auto, on or off" in bad.output
    assert "Traceback" not in bad.output
    ok = runner.invoke(app, ["tune", *small, "--sessions", "on", "--out", str(tmp_path / "r")])
    assert ok.exit_code == 0, ok.output
    import json

    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["config"]["sessions"] == "on"


class _V1Server(CoreTransport):
    """A server from before 1.1: it ignores the announced version (answers v1, no
    capabilities) and has no session routes."""

    def __init__(self) -> None:
        super().__init__(MockBackend(hidden_size=H), ServerSettings(api_keys=[], sessions=False))
        self.paths: list[str] = []

    def handle_request(self, request: Any) -> Any:
        self.paths.append(request.url.path)
        del request.headers["X-BBT-Protocol"]
        return super().handle_request(request)


def test_auto_against_a_v1_server_falls_back_to_full_prompts(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    server = _V1Server()
    with _client(_core()) as c_ref, Client("http://v1.test", transport=server) as old:
        ref = _run(tmp_path, "ref", c_ref, mock_task, split, sessions="off")
        fell_back = _run(tmp_path, "v1", old, mock_task, split)  # sessions="auto"
    _same(ref, fell_back)
    assert not any("/sessions" in p for p in server.paths)
    assert "/v1/logits" in server.paths
