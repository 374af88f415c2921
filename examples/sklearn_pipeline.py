"""BBT as a scikit-learn step: a Pipeline around BBTClassifier, cross-validated, then fitted
and used on held-out texts, and pickled (without the API key).

Runs offline in seconds on the mock model in this process (``mock=True``). Against a real
service, drop ``mock=True`` and pass ``base_url=`` (the key comes from ``BBT_API_KEY``), and a
``template``/``verbalizer`` or a preset ``task`` for your labels.

    .venv/bin/python examples/sklearn_pipeline.py
"""

from __future__ import annotations

import pickle

import numpy as np
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import Pipeline

from bbt.server.mock import sample_mock_dataset
from bbt.sklearn import BBTClassifier


def load(n: int, seed: int) -> tuple[list[str], np.ndarray]:  # type: ignore[type-arg]
    """Texts and string labels: the mock task's sentences."""
    pairs = sample_mock_dataset(n, seed)
    names = np.array(["negative", "positive"])
    return [t for t, _ in pairs], names[[y for _, y in pairs]]


def main() -> None:
    x, y = load(96, 0)
    x_test, y_test = load(300, 1)
    pipe = Pipeline(
        [
            (
                "bbt",
                BBTClassifier(
                    mock=True,
                    mock_hidden_size=32,
                    n_tokens=10,
                    d=50,
                    popsize=10,
                    budget=200,
                    eval_every=50,
                    seed=1,
                ),
            )
        ]
    )
    scores = cross_val_score(pipe, x, y, cv=3)
    print(f"3-fold accuracy: {' '.join(f'{s:.3f}' for s in scores)} (mean {scores.mean():.3f})")

    pipe.fit(x, y)
    clf = pipe.named_steps["bbt"]
    print(f"classes: {[str(c) for c in clf.classes_]}; API calls spent: {clf.n_calls_}")
    for text, p in zip(x_test[:3], pipe.predict_proba(x_test[:3]), strict=True):
        print(f"  {clf.classes_[p.argmax()]:<8} p={p.max():.2f}  {text}")
    print(f"held-out accuracy on {len(x_test)} texts: {pipe.score(x_test, y_test):.3f}")

    again = pickle.loads(pickle.dumps(pipe))
    same = (again.predict(x_test) == pipe.predict(x_test)).all()
    print(f"pickled and reloaded: same predictions: {bool(same)}")


if __name__ == "__main__":
    main()
