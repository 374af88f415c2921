"""Feature probes: logistic regression and an MLP (scikit-learn, ``bbt[compare]``) fitted
on the feature vectors the service returns for the labelled rows (protocol 1.3
``features``, mean pooling over the rendered input)."""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bbt.client.service import FeatureService, offers_features
from bbt.comparison.base import Classifier, CompareContext, ComparisonError, Fitted, IntArray, Kind
from bbt.comparison.prompting import labels_of, render_inputs
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


def _sklearn(module: str = "sklearn") -> Any:
    """A scikit-learn module (imported only here: an extra, without type stubs)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ComparisonError(
            "the feature probes need scikit-learn: pip install 'bbt[compare]'"
        ) from None


def features_of(
    service: FeatureService, task: Task, examples: Sequence[Example]
) -> np.ndarray[Any, Any]:
    texts = render_inputs(task, service, examples)
    return np.asarray(service.features(texts)[0], dtype=np.float64)


@dataclass
class ProbePredictor(Classifier):
    service: FeatureService
    task: Task
    model: Any

    def predict_rows(self, examples: Sequence[Example]) -> IntArray:
        x = features_of(self.service, self.task, examples)
        return np.asarray(self.model.predict(x), dtype=np.int64)


class _Probe:
    name: str = "probe"
    kind: Kind = "black-box"

    def model(self, seed: int) -> Any:
        """The fitted model: :meth:`classifier` on standardised features."""
        make_pipeline = _sklearn("sklearn.pipeline").make_pipeline
        scaler = _sklearn("sklearn.preprocessing").StandardScaler
        return make_pipeline(scaler(), self.classifier(seed))

    def classifier(self, seed: int) -> Any:
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

    def classifier(self, seed: int) -> Any:
        lr = _sklearn("sklearn.linear_model").LogisticRegression
        return lr(max_iter=2000, random_state=seed)


class MLPProbe(_Probe):
    """A one-hidden-layer MLP (128 units) on standardised features."""

    name = "feature-mlp"

    def classifier(self, seed: int) -> Any:
        mlp = _sklearn("sklearn.neural_network").MLPClassifier
        return mlp(hidden_layer_sizes=(128,), max_iter=500, random_state=seed)
