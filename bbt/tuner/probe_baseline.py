"""The baseline of a probe run: the plain probe, i.e. the same method at z = 0.

A ``probe`` or ``probe-tuned`` run classifies with a head on the features under its prompt
(:mod:`bbt.tuner.methods.probe`), not with the verbalizer. Its fair baseline is therefore not
p0 read through the verbalizer but the plain probe: a head of the run's kind and pooling
fitted on the run's own training shots (``train.jsonl``) under p0, its regularisation chosen
by the same cross-validation the run used (:func:`~bbt.tuner.probe_head.cv_score`). For a
``probe`` run that is the run's own head; for a ``probe-tuned`` run that selected z = 0 too.
Otherwise it costs one features call on the training shots.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bbt.client.service import FeatureService, offers_features
from bbt.errors import RunError
from bbt.tuner.data import parse_jsonl
from bbt.tuner.manifest import TRAIN_FILE, read_manifest
from bbt.tuner.predict import TunedPrompt
from bbt.tuner.probe_head import ProbeHead, cv_score, fit_head
from bbt.tuner.rundir import read_text

__all__ = ["PLAIN_PROBE", "plain_probe_head"]

#: How ``bbt eval --baseline`` names this baseline.
PLAIN_PROBE = "plain probe (p0)"


def plain_probe_head(tuned: TunedPrompt, service: object, p0: np.ndarray[Any, Any]) -> ProbeHead:
    """The plain probe's head at ``p0`` for the probe run ``tuned`` was loaded from."""
    head, run_dir, task = tuned.head, tuned.run_dir, tuned.task
    if head is None or run_dir is None:
        raise RunError("the plain probe needs a probe run's head and run directory")
    manifest = read_manifest(run_dir)
    if manifest.get("config", {}).get("method") == "probe" or np.array_equal(tuned.prompt, p0):
        return head  # the run selected z = 0: its head is the plain probe
    if not offers_features(service):
        raise RunError(
            "the baseline of a probe run is the plain probe, which needs a service that "
            "returns features (protocol 1.3, the 'features' capability)"
        )
    assert isinstance(service, FeatureService)
    try:
        train = parse_jsonl(read_text(run_dir / TRAIN_FILE))
    except (OSError, ValueError, KeyError) as exc:
        raise RunError(f"cannot read the training shots of {run_dir}: {exc}") from None
    info = service.model_info()
    texts = [task.render_for(info, e.fields) for e in train]
    labels = np.asarray([e.label for e in train], dtype=np.int64)
    pooling: Any = head.pooling
    feats = service.features(texts, np.asarray(p0, dtype=np.float32)[None], pooling=pooling)[0]
    objective = str(manifest.get("probe", {}).get("objective", "kfold"))  # the run's own
    _, _, c = cv_score(feats, labels, task.num_classes, kind=head.kind, objective=objective)
    return fit_head(feats, labels, task.num_classes, kind=head.kind, c=c, pooling=head.pooling)
