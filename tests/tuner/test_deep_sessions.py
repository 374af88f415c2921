"""BBTv2 over deep projection sessions (protocol 1.5): bitwise the history of full deep
prompts on the mock, far fewer bytes up, and full deep prompts on servers without them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bbt.client import Client, LocalClient
from bbt.errors import ConfigurationError
from bbt.protocol import DEEP_SESSIONS_CAPABILITY
from bbt.server import MockBackend, ServerSettings
from bbt.server._core import ServiceCore
from bbt.testing import CoreTransport
from bbt.tuner import Example, Task, TuneResult, tune
from bbt.tuner.bbtv2 import BBTv2Tuner, DeepEvaluator
from bbt.tuner.deep_sessions import DeepSessionEvaluator

from .conftest import H, small_config

Split = tuple[list[Example], list[Example]]
LAYERS = 4


def _core(**settings: Any) -> ServiceCore:
    backend = MockBackend(hidden_size=H, num_layers=LAYERS)
    return ServiceCore(backend, ServerSettings(api_keys=[], **settings))


def _client(core: ServiceCore) -> Client:
    return Client("http://bbt.test", transport=CoreTransport(core), env_file=None)


def _history(result: TuneResult) -> list[dict[str, Any]]:
    assert result.run_dir is not None
    rows = [json.loads(x) for x in (result.run_dir / "history.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("wall_time")
    return rows


def _run(tmp: Path, name: str, service: Any, task: Task, split: Split, **cfg: Any) -> TuneResult:
    config = small_config(method="bbtv2", **cfg)
    return tune(service, task, *split, config, run_dir=tmp / name, plot=False)


def test_deep_sessions_give_bitwise_the_history_of_full_deep_prompts(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    full_core, session_core = _core(), _core()
    with _client(full_core) as c_full, _client(session_core) as c_sess:
        full = _run(tmp_path, "full", c_full, mock_task, split, sessions="off")
        sess = _run(tmp_path, "sess", c_sess, mock_task, split, sessions="on")
    assert _history(full) == _history(sess)
    np.testing.assert_array_equal(full.prompt, sess.prompt)
    np.testing.assert_array_equal(full.z, sess.z)
    assert full.metrics == sess.metrics
    assert full.usage["calls"] == sess.usage["calls"]
    # z of the varying layer a candidate (4 d bytes) instead of L n H prompt values.
    assert sess.usage["bytes_sent"] < full.usage["bytes_sent"] / 3
    assert session_core.sessions is not None
    assert len(session_core.sessions) == 0  # closed at the end


def test_auto_uses_a_deep_session_when_offered(mock_task: Task, split: Split) -> None:
    with _client(_core()) as client:
        tuner = BBTv2Tuner(client, mock_task, *split, small_config(method="bbtv2"))
        assert isinstance(tuner.evaluator, DeepSessionEvaluator)
        tuner.evaluator.close()


def test_old_servers_get_full_deep_prompts(mock_task: Task, split: Split) -> None:
    # No sessions at all, and sessions without deep ones (a 1.1 - 1.3 server).
    no_sessions = _core(sessions=False)
    shallow_only = _core()
    caps = [c for c in shallow_only.info.capabilities if c != DEEP_SESSIONS_CAPABILITY]
    shallow_only.info = shallow_only.info.model_copy(update={"capabilities": caps})
    for core in (no_sessions, shallow_only):
        with _client(core) as client:
            assert DEEP_SESSIONS_CAPABILITY not in client.model_info().capabilities
            tuner = BBTv2Tuner(client, mock_task, *split, small_config(method="bbtv2"))
            assert isinstance(tuner.evaluator, DeepEvaluator)
            with pytest.raises(ConfigurationError, match="deep projection sessions"):
                BBTv2Tuner(client, mock_task, *split, small_config(method="bbtv2", sessions="on"))


def test_local_client_sessions_on_matches_full_prompts(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    def local() -> LocalClient:
        return LocalClient(MockBackend(hidden_size=H, num_layers=LAYERS))

    full = _run(tmp_path, "full", local(), mock_task, split, sessions="off", budget=80)
    sess = _run(tmp_path, "sess", local(), mock_task, split, sessions="on", budget=80)
    assert _history(full) == _history(sess)
    np.testing.assert_array_equal(full.prompt, sess.prompt)


def test_an_evicted_deep_session_reopens_and_a_resume_on_a_new_server_matches(
    tmp_path: Path, mock_task: Task, split: Split
) -> None:
    from bbt.tuner import resume
    from bbt.tuner.tuner import GenerationRecord

    with _client(_core()) as c_ref:
        ref = _run(tmp_path, "ref", c_ref, mock_task, split, sessions="off", budget=96)
    core = _core()
    evictions: list[int] = []

    def evict_then_stop(rec: GenerationRecord) -> None:
        assert core.sessions is not None
        evictions.append(core.sessions.evict_all())
        if rec.generation >= 5:
            raise KeyboardInterrupt

    with _client(core) as c, pytest.raises(KeyboardInterrupt):
        tune(
            c,
            mock_task,
            *split,
            small_config(method="bbtv2", sessions="on", budget=96),
            run_dir=tmp_path / "run",
            callbacks=[evict_then_stop],
            plot=False,
        )
    assert sum(evictions) >= 4  # evicted after every generation, reopened each time
    with _client(_core()) as c2:  # a restarted server: the session is opened anew
        resumed = resume(tmp_path / "run", c2, plot=False)
        assert resumed.usage["bytes_sent"] > 0
    assert _history(ref) == _history(resumed)
    np.testing.assert_array_equal(ref.z, resumed.z)
