"""Experiment tracking: :class:`MLflowCallback` logs a run to MLflow (``bbt[mlflow]``).

It logs, to one MLflow run:

- parameters: those given to the callback, and at the end the run's task, model, method and
  every :class:`~bbt.tuner.tuner.TuneConfig` field (``config.budget``, ...);
- metrics after every generation, at step = API calls spent: ``loss_min``, ``loss_mean``,
  ``best_loss``, ``sigma`` (and ``train_metric`` when known); after each dev evaluation
  ``dev_metric`` and ``best_dev_metric`` (the task's metric, logged as param ``metric``);
  at the end ``selected_dev_metric``, ``selected_train_loss``, ``selected_at_calls``;
- the run directory (when the run has one) as artifacts under ``run/``.

It talks to MLflow through :class:`mlflow.tracking.MlflowClient` only (no global active
run), so it leaves the caller's MLflow state alone. The run directory holds no credential
(see :mod:`bbt.tuner.run`), so nothing secret is uploaded.

::

    from bbt.tuner.tracking import MLflowCallback
    tune(service, task, train, dev, config, run_dir="runs/x",
         callbacks=[MLflowCallback(tracking_uri="sqlite:///mlflow.db", experiment="bbt")])
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from bbt.tuner.callbacks import TuneCallback
from bbt.tuner.records import GenerationRecord

#: Record fields logged after every generation.
GENERATION_METRICS = ("loss_min", "loss_mean", "best_loss", "sigma", "train_metric")


class MLflowCallback(TuneCallback):
    """Logs a tuning run to MLflow (see the module docstring).

    Args:
        tracking_uri: where MLflow stores runs (default: MLflow's own, ``MLFLOW_TRACKING_URI``).
        experiment: experiment name, created when missing (default: MLflow's default one).
        run_name: the MLflow run's name.
        params: extra parameters to log when the run starts.
        log_artifacts: upload the run directory at the end.
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        params: Mapping[str, Any] | None = None,
        log_artifacts: bool = True,
    ) -> None:
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ImportError("MLflowCallback needs mlflow: pip install 'bbt[mlflow]'") from None
        self.client: Any = MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self.run_name = run_name
        self.params = dict(params or {})
        self.log_artifacts = log_artifacts
        #: The MLflow run id, once the first generation has started it.
        self.run_id: str | None = None

    def _start(self) -> str:
        if self.run_id is None:
            exp_id = "0"
            if self.experiment is not None:
                found = self.client.get_experiment_by_name(self.experiment)
                exp_id = (
                    found.experiment_id
                    if found is not None
                    else self.client.create_experiment(self.experiment)
                )
            run = self.client.create_run(exp_id, run_name=self.run_name)
            self.run_id = str(run.info.run_id)
            self._log_params(self.params)
        return self.run_id

    def _log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(str(k), str(v)) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(self._start(), params=items[i : i + 100])

    def _log(self, key: str, value: float | None, step: int) -> None:
        if value is not None and math.isfinite(value):
            self.client.log_metric(self._start(), key, float(value), step=step)

    def on_generation(self, record: GenerationRecord) -> None:
        self._start()
        for key in GENERATION_METRICS:
            self._log(key, getattr(record, key), record.calls)
        return None

    def on_evaluation(self, record: GenerationRecord) -> None:
        self._log("dev_metric", record.dev_metric, record.calls)
        self._log("best_dev_metric", record.best_dev_metric, record.calls)

    def on_finish(self, result: Any) -> None:
        run_id = self._start()
        manifest: dict[str, Any] = getattr(result, "manifest", None) or {}
        params: dict[str, Any] = {
            f"config.{k}": v for k, v in (manifest.get("config") or {}).items()
        }
        params["task"] = (manifest.get("task") or {}).get("name")
        params["model"] = (manifest.get("model") or {}).get("id")
        params["method"] = manifest.get("method")
        params["metric"] = result.metric
        self._log_params({k: v for k, v in params.items() if k not in self.params})
        step = int(result.calls)
        self._log("selected_dev_metric", result.dev_metric, step)
        self._log("selected_train_loss", result.train_loss, step)
        self._log("selected_at_calls", float(result.selected_at_calls), step)
        if self.log_artifacts and result.run_dir is not None:
            self.client.log_artifacts(run_id, str(result.run_dir), artifact_path="run")
        self.client.set_terminated(run_id, "FINISHED")
