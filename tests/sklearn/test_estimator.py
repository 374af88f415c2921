"""BBTClassifier: scikit-learn's estimator checks, Pipeline, cross_val_score and GridSearchCV
on the mock, pickling without the key, prediction by registry id or upload, text pairs.

(No ``__init__.py`` in this folder, so that nothing here can be imported as ``sklearn``.)
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("sklearn")

import sklearn
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.pipeline import Pipeline
from sklearn.utils.estimator_checks import parametrize_with_checks

from bbt.server.mock import sample_mock_dataset
from bbt.sklearn import BBTClassifier

#: Small enough for the checks to run in seconds; the mock's six verbalizer words let the
#: checks' 3-class data have a word per class.
CHECK_KW: dict[str, Any] = {
    "verbalizer": ("bad", "great", "good", "terrible", "yes", "no"),
    "mock": True,
    "mock_hidden_size": 16,
    "n_tokens": 3,
    "d": 8,
    "popsize": 6,
    "budget": 24,
    "eval_every": 12,
}
#: Settings under which the mock task is learnt (tests/test_examples.py's pipeline: 0.85+).
TUNE_KW: dict[str, Any] = {
    "mock": True,
    "mock_hidden_size": 32,
    "n_tokens": 10,
    "d": 50,
    "popsize": 10,
    "budget": 200,
    "eval_every": 50,
    "seed": 1,
}


def mock_data(n: int, seed: int) -> tuple[list[str], np.ndarray[Any, Any]]:
    pairs = sample_mock_dataset(n, seed)
    names = np.array(["neg", "pos"])
    return [t for t, _ in pairs], names[[y for _, y in pairs]]


def test_the_real_sklearn_is_imported() -> None:
    # A folder named sklearn under tests/ must not stand in for the package.
    assert hasattr(sklearn, "__version__")
    assert Path(__file__).parent not in Path(sklearn.__file__ or ".").parents


# Every check scikit-learn yields for this classifier runs and passes: none is expected to
# fail (numeric toy data is read as text: a one-field template joins a row's cells).
@parametrize_with_checks([BBTClassifier(**CHECK_KW)])
def test_sklearn_estimator_checks(estimator: Any, check: Any) -> None:
    check(estimator)


def test_fit_predict_proba_score_on_text_labels() -> None:
    X, y = mock_data(120, 0)
    Xt, yt = mock_data(200, 1)
    clf = BBTClassifier(**TUNE_KW).fit(X, y)
    assert list(clf.classes_) == ["neg", "pos"]
    proba = clf.predict_proba(Xt)
    assert proba.shape == (200, 2)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    assert set(clf.predict(Xt)) <= {"neg", "pos"}
    assert (clf.classes_[proba.argmax(axis=1)] == clf.predict(Xt)).all()
    assert clf.score(Xt, yt) >= 0.75  # held out; p0 alone is near chance on the mock


def test_pipeline_and_cross_val_score() -> None:
    X, y = mock_data(90, 2)
    pipe = Pipeline([("bbt", BBTClassifier(**TUNE_KW))])
    scores = cross_val_score(pipe, np.asarray(X, dtype=object), y, cv=3)
    assert scores.shape == (3,)
    assert scores.mean() >= 0.7


def test_grid_search_over_two_settings() -> None:
    X, y = mock_data(90, 3)
    grid = GridSearchCV(BBTClassifier(**TUNE_KW), {"n_tokens": [5, 10], "budget": [100, 200]}, cv=2)
    grid.fit(X, y)
    assert len(grid.cv_results_["params"]) == 4
    assert grid.best_params_["n_tokens"] in (5, 10)
    assert grid.best_estimator_.n_tokens == grid.best_params_["n_tokens"]
    assert grid.best_score_ >= 0.7
    assert grid.score(*mock_data(100, 4)) >= 0.7


def test_get_set_params_and_clone() -> None:
    clf = BBTClassifier(task="mock", mock=True, budget=50)
    assert clf.get_params()["budget"] == 50
    assert clf.set_params(d=7).d == 7
    twin = clone(clf)
    assert twin.get_params() == clf.get_params()
    assert not hasattr(twin, "prompt_")


def test_pickles_without_the_api_key_and_predicts_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    X, y = mock_data(80, 5)
    clf = BBTClassifier(api_key="sk-do-not-store-1234", **TUNE_KW).fit(X, y)
    assert "sk-do-not-store-1234" not in repr(clf)
    # The notebook displays (HTML diagram, MIME bundle) list the parameters too.
    assert "sk-do-not-store-1234" not in clf._repr_html_()
    assert "sk-do-not-store-1234" not in str(clf._repr_mimebundle_())
    blob = pickle.dumps(clf)
    assert b"sk-do-not-store-1234" not in blob
    back = pickle.loads(blob)
    assert back.api_key is None
    np.testing.assert_allclose(back.predict_proba(X[:20]), clf.predict_proba(X[:20]), atol=1e-6)
    assert list(back.predict(X)) == list(clf.predict(X))


def test_predicts_by_registry_id_or_by_upload(tmp_path: Path) -> None:
    from pydantic import SecretStr

    from bbt.client import Client
    from bbt.server.local import ServiceCore
    from bbt.server.mock import MockBackend
    from bbt.server.registry import PromptRegistry
    from bbt.server.settings import ServerSettings
    from bbt.testing import CoreTransport

    X, y = mock_data(80, 6)
    clf = BBTClassifier(**TUNE_KW).fit(X, y)  # the in-process mock: no registry
    uploaded = clf.predict_proba(X[:10])
    assert clf.tuned_prompt().last_path == "upload"

    # The same model behind a server core with a prompt registry, reached over a client.
    registry = PromptRegistry(tmp_path / "registry.sqlite3")
    core = ServiceCore(
        MockBackend(hidden_size=TUNE_KW["mock_hidden_size"]),
        ServerSettings(api_keys=[SecretStr("sk-reg-test-1")]),
        registry,
    )
    with Client(
        "http://reg.test", "sk-reg-test-1", transport=CoreTransport(core), env_file=None
    ) as c:
        clf.bind(c)
        by_id = clf.predict_proba(X[:10])
        assert clf.tuned_prompt().last_path == "id"
        assert clf.tuned_prompt().prompt_id is not None
        clf.predict_proba(X[10:20])  # stored once, named by id from then on
        assert registry.usage(registry.tenant_of("sk-reg-test-1"))[0] == 1
    registry.close()
    np.testing.assert_allclose(by_id, uploaded, atol=1e-5)
    assert not hasattr(pickle.loads(pickle.dumps(clf)), "_service")


def test_text_pairs_from_a_dataframe_and_feature_names() -> None:
    import pandas as pd

    texts, y = mock_data(80, 7)
    df = pd.DataFrame({"first": texts, "second": [t[::-1] for t in texts]})
    clf = BBTClassifier(
        template="{a} . {b} It was {mask} .", verbalizer={"neg": "bad", "pos": "great"},
        **TUNE_KW,
    )  # fmt: skip
    clf.fit(df, y)
    assert list(clf.feature_names_in_) == ["first", "second"]
    assert clf.n_features_in_ == 2
    assert clf.predict(df.iloc[:5]).shape == (5,)
    with pytest.raises(ValueError, match="Feature names seen at fit time, yet now missing"):
        clf.predict(df[["first"]].iloc[:3])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mock": True, "verbalizer": None, "task": "agnews"}, "one word for each of 2 classes"),
        ({"mock": False, "mock_hidden_size": 16}, "needs task= .* or template="),
        ({"mock": True, "verbalizer": {"neg": "bad"}}, "no word for class\\(es\\) pos"),
        ({"mock": True, "verbalizer": ("bad",)}, "1 words for 2 classes"),
    ],
)
def test_clear_errors(kwargs: dict[str, Any], message: str) -> None:
    X, y = mock_data(20, 8)
    with pytest.raises(ValueError, match=message):
        BBTClassifier(**{**kwargs, "budget": 8, "popsize": 4}).fit(X, y)
