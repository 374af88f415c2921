"""GridSearchCV over BBT's settings (prompt length n and budget) on the mock model.

Each candidate is a fresh BBTClassifier (scikit-learn clones it) tuned on each fold; the
best one is refitted on all the data and scored on held-out texts.

    .venv/bin/python examples/sklearn_grid_search.py
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import GridSearchCV

from bbt.server.mock import sample_mock_dataset
from bbt.sklearn import BBTClassifier


def load(n: int, seed: int) -> tuple[list[str], np.ndarray]:  # type: ignore[type-arg]
    pairs = sample_mock_dataset(n, seed)
    return [t for t, _ in pairs], np.array([y for _, y in pairs])


def main() -> None:
    x, y = load(96, 0)
    x_test, y_test = load(300, 1)
    base = BBTClassifier(mock=True, mock_hidden_size=32, d=50, popsize=10, eval_every=50, seed=1)
    grid = GridSearchCV(base, {"n_tokens": [5, 10], "budget": [100, 200]}, cv=2)
    grid.fit(x, y)
    for params, mean in zip(
        grid.cv_results_["params"], grid.cv_results_["mean_test_score"], strict=True
    ):
        n, budget = params["n_tokens"], params["budget"]
        print(f"  n_tokens={n:<3} budget={budget:<4} cv accuracy {mean:.3f}")
    print(f"best: {grid.best_params_} (cv accuracy {grid.best_score_:.3f})")
    print(f"held-out accuracy of the refitted best: {grid.score(x_test, y_test):.3f}")


if __name__ == "__main__":
    main()
