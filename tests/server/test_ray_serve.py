"""A real local Ray Serve with 2 mock replicas, tuned through (issue 13).

One module-scoped deployment: starting and stopping Ray dominates the wall time.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

pytest.importorskip("ray.serve")

from bbt.client import Client, LocalClient
from bbt.errors import AuthenticationError
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.server.ray_serve import APP_NAME, BackendSpec, ReplicaOptions, start, stop
from bbt.tuner import Example, TuneConfig, get_preset, sample_k_shot, tune

pytestmark = [
    pytest.mark.slow,
    # Ray's own imports and shutdown warn about things that are not ours to fix.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
]

H = 32
KEY = "sk-ray-test-3f9a1c7e0b2d4e6f"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_url() -> Iterator[str]:
    mp = pytest.MonkeyPatch()
    # Replicas read their keys from their own environment, inherited from this process
    # by the local Ray it starts: the key never travels through Ray's deployment args.
    mp.setenv("BBT_SERVER_API_KEYS", KEY)
    port = _free_port()
    started = start(
        BackendSpec("mock", {"hidden_size": H}),
        ReplicaOptions(replicas=2, num_cpus=0.5),
        port=port,
        num_cpus=2,
    )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(started)
        mp.undo()


def test_two_replicas_run_and_auth_is_the_apps(ray_url: str) -> None:
    from ray import serve

    app = serve.status().applications[APP_NAME]
    states = app.deployments[APP_NAME].replica_states
    assert states.get("RUNNING") == 2
    r = httpx.get(f"{ray_url}/v1/models", timeout=30)
    assert r.status_code == 401
    assert r.json()["error"]["type"] == "authentication"
    with Client(ray_url, api_key="wrong", env_file=None) as bad, pytest.raises(AuthenticationError):
        bad.models()
    with Client(ray_url, api_key=KEY, env_file=None) as client:
        assert client.model_info().hidden_size == H


def test_tuning_through_ray_serve_matches_the_in_process_run(
    ray_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BBT_HOME", str(tmp_path / "home"))
    examples = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    train, dev = sample_k_shot(examples, 16, 1, 2)
    task = get_preset("mock")
    cfg = TuneConfig(n_tokens=5, dim=20, popsize=8, budget=64, eval_every=32, seed=3)
    local = LocalClient(MockBackend(hidden_size=H))
    ref = tune(local, task, train, dev, cfg)
    with Client(ray_url, api_key=KEY, env_file=None, max_concurrency=2) as client:
        res = tune(client, task, train, dev, cfg, run_dir=tmp_path / "run")
        usage: Any = client.usage.copy()
    # Two chunks a generation, spread over the replicas; answers bitwise the local ones.
    assert res.z.tobytes() == ref.z.tobytes()
    assert res.metrics == ref.metrics
    # Usage is exact: the same candidates, sequences and tokens, in more requests.
    assert (usage.calls, usage.sequences, usage.tokens) == (
        local.usage.calls,
        local.usage.sequences,
        local.usage.tokens,
    )
    assert usage.requests > local.usage.requests


def test_concurrent_jobs_get_their_own_answers(ray_url: str) -> None:
    """Requests of different jobs may share a merged batch: each still gets its own rows."""
    import concurrent.futures as cf

    backend = MockBackend(hidden_size=H)
    rng = np.random.default_rng(1)

    def one(seed: int) -> bool:
        texts = [f"{t} It was [MASK] ." for t, _ in sample_mock_dataset(3 + seed, seed)]
        prompts = (rng.standard_normal((4, 3, H)) * 0.05).astype(np.float32)
        with Client(ray_url, api_key=KEY, env_file=None) as c:
            got = c.logits(prompts, texts, [5, 6])
        want, _ = backend.logits(prompts, texts, np.array([5, 6]))
        return got.tobytes() == want.tobytes()

    with cf.ThreadPoolExecutor(6) as pool:
        assert all(pool.map(one, range(6)))
