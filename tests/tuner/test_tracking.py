"""MLflowCallback logs to a local file store (no server), read back through MlflowClient."""

from __future__ import annotations

from pathlib import Path

import pytest

from bbt.client import LocalClient
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.tuner import Example, TuneConfig, get_preset, sample_k_shot, tune

pytest.importorskip("mlflow")


def test_params_per_generation_metrics_and_the_run_dir_as_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    from bbt.tuner.tracking import MLflowCallback

    # MLflow 3 refuses the file store unless asked; a sqlite store needs sqlalchemy.
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    pool = [Example({"text": t}, y) for t, y in sample_mock_dataset(200, 0)]
    train, dev = sample_k_shot(pool, k=8, seed=0, num_classes=2)
    cb = MLflowCallback(tracking_uri=uri, experiment="bbt-test", params={"note": "x"})
    config = TuneConfig(n_tokens=5, dim=20, popsize=8, budget=48, eval_every=16, seed=0)
    svc = LocalClient(MockBackend(hidden_size=32))
    result = tune(
        svc, get_preset("mock"), train, dev, config, run_dir=tmp_path / "run", callbacks=[cb]
    )

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("bbt-test")
    assert exp is not None
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.run_id == cb.run_id
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["note"] == "x"
    assert params["config.budget"] == "48"
    assert params["config.dim"] == "20"
    assert params["task"] == "mock"
    assert params["metric"] == "accuracy"
    history = client.get_metric_history(run.info.run_id, "loss_min")
    assert [m.step for m in history] == [8, 16, 24, 32, 40, 48]
    with open(tmp_path / "run" / "history.jsonl") as fh:
        import json

        want = [json.loads(line)["loss_min"] for line in fh]
    assert [m.value for m in history] == pytest.approx(want)
    dev = client.get_metric_history(run.info.run_id, "dev_metric")
    assert [m.step for m in dev] == [16, 32, 48]
    assert run.data.metrics["selected_dev_metric"] == pytest.approx(result.dev_metric)
    names = {a.path for a in client.list_artifacts(run.info.run_id, "run")}
    assert {"run/manifest.json", "run/history.jsonl", "run/prompt.npy"} <= names
    assert not any("key" in n.lower() for n in names)
