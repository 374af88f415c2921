"""Track a tuning run in MLflow: parameters, per-generation metrics and the run directory.

Logs to a local store (no server), then reads the run back with MlflowClient. MLflow 3
refuses its file store unless MLFLOW_ALLOW_FILE_STORE=true (set here for the demo); a
``sqlite:///mlflow.db`` URI works too where SQLAlchemy is installed.

    .venv/bin/python examples/mlflow_tracking.py [STORE_DIR]
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from bbt.client import LocalClient
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.tuner import Example, TuneConfig, get_preset, sample_k_shot, tune
from bbt.tuner.tracking import MLflowCallback


def main(root: Path) -> None:
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (root / "mlruns").as_uri()
    task = get_preset("mock")
    pool = [Example({"text": t}, y) for t, y in sample_mock_dataset(400, 0)]
    train, dev = sample_k_shot(pool, k=16, seed=1, num_classes=task.num_classes)
    config = TuneConfig(n_tokens=10, dim=50, popsize=10, budget=200, eval_every=50, seed=1)
    tracker = MLflowCallback(tracking_uri=uri, experiment="bbt-demo", run_name="mock-seed1")
    result = tune(
        LocalClient(MockBackend(hidden_size=32)),
        task,
        train,
        dev,
        config,
        run_dir=root / "run",
        callbacks=[tracker],
        plot=False,
    )
    print(f"tuned: dev accuracy {result.dev_metric:.3f} after {result.calls} calls")

    client = MlflowClient(tracking_uri=uri)
    assert tracker.run_id is not None
    run = client.get_run(tracker.run_id)
    print(f"MLflow run {run.info.run_id} ({run.info.status}) in {uri}")
    print(
        f"  params: budget={run.data.params['config.budget']} dim={run.data.params['config.dim']}"
    )
    losses = client.get_metric_history(run.info.run_id, "loss_min")
    print(f"  loss_min logged at {len(losses)} generations, last {losses[-1].value:.4f}")
    dev_hist = client.get_metric_history(run.info.run_id, "dev_metric")
    print(f"  dev_metric at calls {[m.step for m in dev_hist]}")
    arts = sorted(a.path for a in client.list_artifacts(run.info.run_id, "run"))
    print(f"  artifacts: {', '.join(arts)}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
