"""A small classification head on feature vectors: what the probe methods fit.

Three kinds, all deterministic for the same features:

- ``logreg``: L2-regularised logistic regression (scikit-learn, the ``bbt[probe]`` extra,
  imported on first use), its strength C picked by cross-validation on the training shots;
- ``ridge``: one-vs-rest ridge regression on +-1 targets, closed form (numpy only);
- ``centroid``: nearest class centroid (numpy only), logits = -squared distance / (2 s^2).

Features are L2-normalised per row, then centred on the training mean and divided by one
scalar (the training features' RMS), so one grid of C values fits every model width.

:func:`cv_score` is the probe's objective: mean log-loss (and accuracy) over repeated
stratified folds of the training shots, the best over the C grid. A smooth loss averaged
over several fold splits ranks candidates with less noise than the accuracy of one split.
With ``objective="loo"`` (``centroid`` only) it is the exact leave-one-out log-loss instead,
in closed form: every shot is held out once and the other N - 1 fit the head.

A head is saved as ``head.json`` (kind, pooling, C, shapes) and ``head.npz`` (arrays),
never pickled, and loaded with ``allow_pickle=False``.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bbt.errors import ConfigurationError, RunError
from bbt.tuner.rundir import atomic_write, read_bytes

F64 = np.ndarray[Any, np.dtype[np.float64]]

HEAD_JSON = "head.json"
HEAD_NPZ = "head.npz"
HEAD_FORMAT = 1
HEAD_KINDS = ("logreg", "ridge", "centroid")
#: Regularisation grid, searched by cross-validation (logreg: C; ridge: 1 / lambda).
C_GRID = (0.1, 1.0, 10.0)
FOLDS = 4
#: How :func:`cv_score` holds shots out: repeated stratified k-fold, or leave-one-out.
OBJECTIVES = ("kfold", "loo")
REPEATS = 2
CV_SEED = 0


@dataclass
class ProbeHead:
    """A fitted head: ``logits(features)`` gives [B, C] class scores (log-probabilities up to
    a constant for ``logreg``)."""

    kind: str
    pooling: str
    num_classes: int
    c: float
    mean: F64  # [F] training mean of the normalised features
    scale: float  # their RMS
    coef: F64  # [C, F]
    intercept: F64  # [C]
    extra: dict[str, Any] = field(default_factory=dict)

    def transform(self, features: np.ndarray[Any, Any]) -> F64:
        return (_normalise(features) - self.mean) / self.scale

    def logits(self, features: np.ndarray[Any, Any]) -> F64:
        """Class scores [B, C] of features [B, F]."""
        x = self.transform(features)
        if self.kind == "centroid":
            d2 = ((x[:, None, :] - self.coef[None]) ** 2).sum(-1)
            out: F64 = -0.5 * d2 / self.intercept[None]
            return out
        scores: F64 = x @ self.coef.T + self.intercept
        return scores

    # ------------------------------------------------------------------ on disk

    def save(self, run_dir: Path) -> None:
        meta = {
            "format": HEAD_FORMAT,
            "kind": self.kind,
            "pooling": self.pooling,
            "num_classes": self.num_classes,
            "c": self.c,
            "scale": self.scale,
            "features": int(self.mean.shape[0]),
            **self.extra,
        }
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, coef=self.coef, intercept=self.intercept)
        atomic_write(run_dir / HEAD_NPZ, buf.getvalue())
        atomic_write(run_dir / HEAD_JSON, (json.dumps(meta, indent=2) + "\n").encode())

    @classmethod
    def load(cls, run_dir: Path) -> ProbeHead:
        try:
            meta = json.loads(read_bytes(run_dir / HEAD_JSON))
            with np.load(io.BytesIO(read_bytes(run_dir / HEAD_NPZ)), allow_pickle=False) as z:
                arrays = {k: np.asarray(z[k], dtype=np.float64) for k in z.files}
            head = cls(
                kind=str(meta["kind"]),
                pooling=str(meta["pooling"]),
                num_classes=int(meta["num_classes"]),
                c=float(meta["c"]),
                mean=arrays["mean"],
                scale=float(meta["scale"]),
                coef=arrays["coef"],
                intercept=arrays["intercept"],
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RunError(f"cannot read the probe head of {run_dir}: {exc}") from None
        if meta.get("format") != HEAD_FORMAT or head.kind not in HEAD_KINDS:
            raise RunError(f"{run_dir / HEAD_JSON} is not a probe head bbt can read")
        if head.coef.shape != (head.num_classes, head.mean.shape[0]):
            raise RunError(f"{run_dir / HEAD_NPZ}: coef has shape {list(head.coef.shape)}")
        return head


def head_logits(
    head: ProbeHead, service: object, prompt: np.ndarray[Any, Any], texts: list[str]
) -> F64:
    """Class log-probabilities [B, C] of ``texts`` under ``prompt`` [n, H] by ``head``."""
    from bbt.client.service import FeatureService, offers_features

    if not offers_features(service):
        raise RunError(
            "this run's prompt comes with a probe head, which needs a service that returns "
            "features (protocol 1.3, the 'features' capability)"
        )
    assert isinstance(service, FeatureService)
    pooling: Any = head.pooling
    feats = service.features(texts, prompt[None], pooling=pooling)[0]
    return _log_softmax(head.logits(feats))


def has_head(run_dir: Path) -> bool:
    return (run_dir / HEAD_JSON).is_file()


def _normalise(features: np.ndarray[Any, Any]) -> F64:
    x = np.asarray(features, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    out: F64 = x / np.maximum(norm, 1e-12)
    return out


def _sklearn_logreg(c: float) -> Any:
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:  # pragma: no cover - depends on the install
        raise ConfigurationError(
            "the logreg probe head needs scikit-learn: pip install 'bbt[probe]'"
        ) from None
    return LogisticRegression(C=c, max_iter=500, tol=1e-6)


def _fit_arrays(kind: str, x: F64, y: np.ndarray[Any, Any], k: int, c: float) -> tuple[F64, F64]:
    """(coef [k, F], intercept [k]) of a head on standardised features ``x``."""
    if kind == "logreg":
        model = _sklearn_logreg(c).fit(x, y)
        coef = np.asarray(model.coef_, dtype=np.float64)
        icpt = np.asarray(model.intercept_, dtype=np.float64)
        if coef.shape[0] == 1:  # binary: sklearn keeps one row, the score of class 1
            coef = np.vstack([np.zeros_like(coef), coef])
            icpt = np.concatenate([[0.0], icpt])
        return coef, icpt
    if kind == "ridge":  # dual form: n shots << F features, one n x n solve
        t = -np.ones((x.shape[0], k))
        t[np.arange(x.shape[0]), y] = 1.0
        t_mean = t.mean(0)
        gram = x @ x.T + np.eye(x.shape[0]) / c
        w = x.T @ np.linalg.solve(gram, t - t_mean)
        return np.ascontiguousarray(w.T), t_mean - x.mean(0) @ w
    if kind == "centroid":
        cent = np.stack([x[y == j].mean(0) for j in range(k)])
        var = np.full(k, float(((x - cent[y]) ** 2).sum(1).mean()) / c + 1e-12)
        return cent, var
    raise ConfigurationError(f"unknown probe head {kind!r}; choose from {', '.join(HEAD_KINDS)}")


def _standardise(features: np.ndarray[Any, Any]) -> tuple[F64, F64, float]:
    x = _normalise(features)
    mean = x.mean(0)
    centred = x - mean
    scale = float(np.sqrt((centred**2).sum(1).mean())) or 1.0
    return centred / scale, mean, scale


def fit_head(
    features: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    num_classes: int,
    *,
    kind: str = "logreg",
    c: float = 1.0,
    pooling: str = "mean",
) -> ProbeHead:
    """A head fitted on features [N, F] and labels [N]."""
    y = np.asarray(labels, dtype=np.int64)
    x, mean, scale = _standardise(features)
    coef, icpt = _fit_arrays(kind, x, y, num_classes, c)
    return ProbeHead(kind, pooling, num_classes, c, mean, scale, coef, icpt)


def _log_softmax(scores: F64) -> F64:
    s = scores - scores.max(-1, keepdims=True)
    out: F64 = s - np.log(np.exp(s).sum(-1, keepdims=True))
    return out


def _folds(labels: np.ndarray[Any, Any]) -> list[tuple[np.ndarray[Any, Any], ...]]:
    """Repeated stratified folds: a fixed seed, so the same labels always split the same."""
    y = np.asarray(labels)
    smallest = int(np.bincount(y).min())
    n_folds = max(2, min(FOLDS, smallest))
    rng = np.random.default_rng(CV_SEED)
    out: list[tuple[np.ndarray[Any, Any], ...]] = []
    for _ in range(REPEATS):
        fold_of = np.empty(len(y), dtype=np.int64)
        for cls in np.unique(y):
            idx = rng.permutation(np.flatnonzero(y == cls))
            fold_of[idx] = np.arange(len(idx)) % n_folds
        out.extend(
            (np.flatnonzero(fold_of != f), np.flatnonzero(fold_of == f)) for f in range(n_folds)
        )
    return out


def _loo_centroid(
    features: np.ndarray[Any, Any], y: np.ndarray[Any, Any], k: int, grid: tuple[float, ...]
) -> tuple[float, float, float]:
    """Exact leave-one-out of the ``centroid`` head, in closed form.

    Distances over the shared variance do not change when the features are centred or
    scaled, so the L2-normalised features serve. Leaving shot i out of its class (n shots,
    centroid mu, r = |x_i - mu|^2) moves that centroid to (n mu - x_i) / (n - 1): the
    distance to it becomes (n / (n - 1))^2 r, and the within-class scatter S loses
    n / (n - 1) r; the other centroids stay."""
    x = _normalise(features)
    n = x.shape[0]
    counts = np.bincount(y, minlength=k).astype(np.float64)
    cent = np.stack([x[y == j].mean(0) for j in range(k)])
    d2 = ((x[:, None, :] - cent[None]) ** 2).sum(-1)  # [N, k]
    rows = np.arange(n)
    r = d2[rows, y]
    shrink = counts[y] / (counts[y] - 1.0)
    d2[rows, y] = shrink**2 * r
    var0 = (r.sum() - shrink * r) / (n - 1)  # [N]: the variance without shot i, at C = 1
    acc = float((d2.argmin(-1) == y).mean())
    best = (np.inf, acc, grid[0])
    for c in grid:
        logp = _log_softmax(-0.5 * d2 / (var0 / c + 1e-12)[:, None])
        loss = float(-logp[rows, y].mean())
        if loss < best[0]:
            best = (loss, acc, c)
    return best


def cv_score(
    features: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    num_classes: int,
    *,
    kind: str = "logreg",
    grid: tuple[float, ...] = C_GRID,
    objective: str = "kfold",
) -> tuple[float, float, float]:
    """(log-loss, accuracy, C): the cross-validated log-loss of the best C in ``grid`` on
    the training shots, the accuracy at that C, and C. Needs two examples of every class.
    ``objective``: ``kfold`` (repeated stratified folds) or ``loo`` (leave-one-out, closed
    form; ``centroid`` head only)."""
    y = np.asarray(labels, dtype=np.int64)
    if np.bincount(y, minlength=num_classes).min() < 2:
        raise ConfigurationError("a probe needs at least 2 training examples of every class")
    if objective == "loo":
        if kind != "centroid":
            raise ConfigurationError(
                f"the leave-one-out objective needs the centroid head, not {kind!r}"
            )
        return _loo_centroid(features, y, num_classes, grid)
    if objective != "kfold":
        raise ConfigurationError(
            f"unknown probe objective {objective!r}; choose from {', '.join(OBJECTIVES)}"
        )
    folds = _folds(y)
    best = (np.inf, 0.0, grid[0])
    for c in grid:
        losses, hits = [], []
        for tr, te in folds:
            head = fit_head(features[tr], y[tr], num_classes, kind=kind, c=c)
            logp = _log_softmax(head.logits(features[te]))
            losses.append(-logp[np.arange(len(te)), y[te]])
            hits.append(logp.argmax(-1) == y[te])
        loss = float(np.concatenate(losses).mean())
        if loss < best[0]:
            best = (loss, float(np.concatenate(hits).mean()), c)
    return best


__all__ = [
    "HEAD_JSON",
    "HEAD_KINDS",
    "HEAD_NPZ",
    "OBJECTIVES",
    "ProbeHead",
    "cv_score",
    "fit_head",
    "has_head",
    "head_logits",
]
