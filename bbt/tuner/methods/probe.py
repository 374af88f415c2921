"""Probes: a small head on the model's feature vectors instead of verbalizer logits.

- ``probe``: the plain probe. Features of the training shots under p0 (z = 0), a head
  fitted on them (:mod:`bbt.tuner.probe_head`); no tuning at all: one features call on
  train + dev, counted as one dev call.
- ``probe-tuned``: CMA-ES moves z as BBT does (p = A z + p0); each candidate costs one
  features call on the training shots, and its loss is the head's cross-validated log-loss
  within those shots (:func:`~bbt.tuner.probe_head.cv_score`), so the dev set stays out of
  the objective (``objective="loo"``, centroid head only: the exact leave-one-out log-loss,
  in closed form, instead of the repeated 4-fold one). Dev selection is BBT's: p0 (z = 0,
  exactly the plain probe) is scored first and a later candidate replaces it only when it
  beats it on dev; a candidate is scored on dev only when its cross-validated loss beats
  z = 0's, so the run can never select a prompt that fits the shots worse than the plain
  probe.

The selected z's head is fitted on the training shots and saved in the run directory
(``head.json`` + ``head.npz``); :class:`bbt.tuner.predict.TunedPrompt` (``bbt eval``,
``bbt predict``) uses it when present.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from bbt.client.service import FeatureService, offers_features
from bbt.errors import ConfigurationError
from bbt.tuner.evaluator import SessionEvaluator
from bbt.tuner.inputs import TunerInputs
from bbt.tuner.methods.base import CallCounts, Method, PromptLayout
from bbt.tuner.probe_head import ProbeHead, cv_score, fit_head
from bbt.tuner.tuner import Candidate, Tuner

if TYPE_CHECKING:
    from bbt.tuner.tuner import TuneConfig

F64 = np.ndarray[Any, np.dtype[np.float64]]


class ProbeTuner(Tuner):
    """BBT's tuner with the loss of a probe: see the module docstring."""

    def __init__(
        self,
        *args: Any,
        head: str = "centroid",
        pooling: str = "mean",
        objective: str = "kfold",
        **kwargs: Any,
    ) -> None:
        """:class:`~bbt.tuner.tuner.Tuner`'s arguments, and the probe's ``head``,
        ``pooling`` and ``objective`` (how :func:`~bbt.tuner.probe_head.cv_score` holds
        shots out: ``kfold`` or ``loo``)."""
        self.head_kind = head
        self.pooling = pooling
        self.objective = objective
        self._heads: dict[bytes, ProbeHead] = {}
        self._z0_loss: float | None = None
        super().__init__(*args, **kwargs)

    def _prepare(self, inputs: TunerInputs) -> TunerInputs:
        if not offers_features(inputs.service):
            raise ConfigurationError(
                "the probe methods need a service that returns features (protocol 1.3, "
                "the 'features' capability)"
            )
        return inputs

    def features(self, z: np.ndarray[Any, Any], texts: list[str]) -> np.ndarray[Any, Any]:
        """Features [P, B, F] of ``texts`` under the candidates z [P, d]."""
        svc = self.service
        assert isinstance(svc, FeatureService)
        zz = np.atleast_2d(np.asarray(z, dtype=np.float64))
        ev = self.evaluator
        pooling: Any = self.pooling
        if isinstance(ev, SessionEvaluator):
            out: np.ndarray[Any, Any] = ev.service.session_features(  # type: ignore[attr-defined]
                ev.session, zz, texts, pooling=pooling
            )
            return out
        return svc.features(texts, self.prompts(zz), pooling=pooling)

    def _cv(self, feats: np.ndarray[Any, Any]) -> tuple[float, float, float]:
        return cv_score(
            feats,
            self.train_labels,
            self.task.num_classes,
            kind=self.head_kind,
            objective=self.objective,
        )

    def evaluate(self, candidates: np.ndarray[Any, Any]) -> tuple[F64, F64]:
        """Cross-validated log-loss and accuracy of each candidate's head on the training
        shots (one features call: P API calls)."""
        feats = self.features(candidates, self.train_texts)
        scores = [self._cv(f) if np.isfinite(f).all() else (math.nan,) * 3 for f in feats]
        return (
            np.asarray([s[0] for s in scores], dtype=np.float64),
            np.asarray([s[1] for s in scores], dtype=np.float64),
        )

    def fit(self, z: np.ndarray[Any, Any], train_feats: np.ndarray[Any, Any]) -> ProbeHead:
        """The head of z on the training shots, C picked by cross-validation."""
        loss, acc, c = self._cv(train_feats)
        head = fit_head(
            train_feats,
            self.train_labels,
            self.task.num_classes,
            kind=self.head_kind,
            c=c,
            pooling=self.pooling,
        )
        head.extra = {"cv_log_loss": loss, "cv_accuracy": acc}
        self._heads[np.asarray(z, dtype=np.float64).tobytes()] = head
        return head

    def z0_loss(self) -> float:
        """The cross-validated loss of z = 0 (the plain probe): computed once per process
        with the first dev check, where the train features of z = 0 are at hand."""
        if self._z0_loss is None:
            z0 = np.zeros(self.config.dim)
            self._z0_loss = self._cv(self.features(z0, self.train_texts)[0])[0]
            self._state.dev_calls += 1
        return self._z0_loss

    def evaluate_dev(self, z: np.ndarray[Any, Any]) -> tuple[float, float]:
        """Fit the head of z on the training shots, score it on dev (one features call on
        train + dev, counted as one dev call). A candidate whose cross-validated loss is not
        below z = 0's is not worth a dev score: it gets the worst, so it is never selected."""
        z = np.asarray(z, dtype=np.float64)
        if z.any():
            best = self._state.best_train
            if best is not None and np.array_equal(best.z, z) and best.train_loss >= self.z0_loss():
                return -math.inf, math.inf  # nothing sent
        n = len(self.train_texts)
        feats = self.features(z, self.train_texts + self.dev_texts)[0]
        self._state.dev_calls += 1
        if not np.isfinite(feats).all():
            return -math.inf, math.inf
        if not z.any() and self._z0_loss is None:
            self._z0_loss = self._cv(feats[:n])[0]
        head = self.fit(z, feats[:n])
        logp = head.logits(feats[n:])
        logp = logp - logp.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        y = self.dev_labels
        acc = float((logp.argmax(-1) == y).mean())
        ce = float(-logp[np.arange(len(y)), y].mean())
        if self.task.metric != "accuracy":
            acc = float(self._metric(logp[None], y)[0])
        return acc, ce

    def head_for(self, z: np.ndarray[Any, Any]) -> ProbeHead:
        """The head of a selected z (fitted again if this process has not fitted it)."""
        key = np.asarray(z, dtype=np.float64).tobytes()
        if key not in self._heads:  # the session may be closed: send the prompt itself
            svc = self.service
            assert isinstance(svc, FeatureService)
            pooling: Any = self.pooling
            prompts = self.prompts(np.atleast_2d(np.asarray(z, dtype=np.float64)))
            self.fit(z, svc.features(self.train_texts, prompts, pooling=pooling)[0])
        return self._heads[key]


class PlainProbeTuner(ProbeTuner):
    """The plain probe: z = 0 only; no generation runs."""

    def done(self) -> bool:
        return True

    def start(self) -> None:
        super().start()
        if self._state.selected is None:  # no dev set: select z = 0 by its training loss
            z0 = np.zeros(self.config.dim)
            head = self.fit(z0, self.features(z0, self.train_texts)[0])
            loss = float(head.extra["cv_log_loss"])
            self._state.dev_calls += 1
            self._state.selected = Candidate(z0, loss, 0)


class _ProbeMethodBase(Method):
    tuner_class = ProbeTuner

    def __init__(
        self, head: str = "centroid", pooling: str = "mean", objective: str = "kfold"
    ) -> None:
        self.head = head
        self.pooling = pooling
        self.objective = objective

    def build(self, inputs: TunerInputs) -> Tuner:
        return inputs.make(
            self.tuner_class, head=self.head, pooling=self.pooling, objective=self.objective
        )

    def layout(self, tuner: Tuner) -> PromptLayout:
        return PromptLayout(tuner.config.dim, tuner.config.n_tokens, tuner.model_info.hidden_size)

    def projection_fingerprint(self, tuner: Tuner) -> str:
        return tuner.projection.fingerprint()

    def manifest_extra(self, tuner: Tuner) -> dict[str, Any]:
        extra: dict[str, Any] = {"head": self.head, "pooling": self.pooling}
        if self.objective != "kfold":  # recorded only when not the default: old runs match
            extra["objective"] = self.objective
        return {"probe": extra}

    def save_artifacts(self, tuner: Tuner, run_dir: Path, z: np.ndarray[Any, Any]) -> None:
        if isinstance(tuner, ProbeTuner):
            tuner.head_for(z).save(run_dir)


class PlainProbeMethod(_ProbeMethodBase):
    name = "probe"
    summary = "a head on the features under p0 (no tuning): one features pass"
    tuner_class = PlainProbeTuner

    def cost(self, config: TuneConfig, *, has_dev: bool) -> CallCounts:
        return CallCounts(0, 0, 0, 1)


class TunedProbeMethod(_ProbeMethodBase):
    name = "probe-tuned"
    summary = "CMA-ES moves the prompt; a head on its features, scored by k-fold loss"


PROBE = PlainProbeMethod()
PROBE_TUNED = TunedProbeMethod()
