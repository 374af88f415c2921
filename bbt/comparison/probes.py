"""Feature probes: logistic regression and an MLP (scikit-learn, ``bbt[compare]``) fitted
on the feature vectors the service returns for the labelled rows (protocol 1.3
``features``, mean pooling over the rendered input)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bbt.client.service import FeatureService, offers_features
from bbt.comparison.base import CompareContext, ComparisonError, Fitted, IntArray
from bbt.comparison.prompting import labels_of, render_inputs
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


def _sklearn() -> Any:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        raise ComparisonError(
            "the feature probes need scikit-learn: pip install 'bbt[compare]'"
        ) from None
    return sklearn


def features_of(service: FeatureService, task: Task, examples: Sequence[Example]) -> np.ndarray:  # type: ignore[type-arg]
    texts = render_inputs(task, service, examples)
    return np.asarray(service.features(texts)[0], dtype=np.float64)


@dataclass
class ProbePredictor:
    service: FeatureService
    task: Task
    model: Any

    def predict(self, examples: Sequence[Example]) -> IntArray:
        if not examples:
            return np.zeros(0, dtype=np.int64)
        x = features_of(self.service, self.task, examples)
        return np.asarray(self.model.predict(x), dtype=np.int64)


class _Probe:
    name = "probe"
    kind = "black-box"

    def model(self, seed: int) -> Any:
        raise NotImplementedError

    def fit(self, ctx: CompareContext) -> Fitted:
        _sklearn()
        svc = ctx.service
        if not offers_features(svc):
            raise ComparisonError(
                f"{self.name} needs the service's features operation (protocol 1.3); "
                "this service does not offer it"
            )
        assert isinstance(svc, FeatureService)
        rows = [*ctx.train, *ctx.dev]
        x = features_of(svc, ctx.task, rows)
        y = labels_of(rows)
        model = self.model(ctx.seed)
        model.fit(x, y)
        return Fitted(ProbePredictor(svc, ctx.task, model), notes={"rows": len(rows)})


class LogisticProbe(_Probe):
    """Logistic regression on standardised features (fitted on train and dev rows)."""

    name = "feature-lr"

    def model(self, seed: int) -> Any:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=seed))


class MLPProbe(_Probe):
    """A one-hidden-layer MLP (128 units) on standardised features."""

    name = "feature-mlp"

    def model(self, seed: int) -> Any:
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(128,), max_iter=500, random_state=seed),
        )
