"""``BBTClassifier``: Black-Box Tuning as a scikit-learn classifier (``bbt[sklearn]``).

``fit(X, y)`` tunes a soft prompt with :func:`bbt.tuner.tune` on the service the estimator
names (``mock=True``: the mock model in this process; else ``base_url`` / ``api_key`` /
``model``, or ``BBT_BASE_URL`` / ``BBT_API_KEY`` from the environment or ``.env``), and
``predict_proba`` is the softmax of the verbalizer logits under the tuned prompt.

**Inputs.** ``X`` holds texts: a list (or 1-d array, or Series) of strings, or a 2-d array
or DataFrame with one column (the text) or two (a text pair, for a two-field template such
as RTE's: one column per field, in order). A one-field template given several columns
reads each row's cells joined by a space (a title and a body, say); cells that are not
strings are written with ``str`` (numbers are read as words, which a language model rarely
makes much of). ``y`` holds any class labels; ``classes_`` is their sorted set and class ``i``
is spoken by the ``i``-th verbalizer word.

**The task.** ``task`` names a preset (its template and, when the class count matches, its
words); ``template`` (with ``{mask}``) overrides the preset's; ``verbalizer`` gives the words:
a mapping ``{class: word}``, a spec ``"neg=bad,pos=great"`` (classes as text), or a sequence
of words in ``classes_`` order. With ``mock=True`` and no task, the mock's own task is used.

**Data split.** With ``k_shot=None`` (default) all of ``(X, y)`` trains and the same set
selects the prompt (a scikit-learn model has no separate dev set); with ``k_shot=k`` the
paper's protocol is followed: k per class to train and ``dev_k`` (default k) others per
class to select on.

``run_dir`` keeps one fit's run directory (a second fit into it is refused, as
:func:`~bbt.tuner.tune` refuses; leave it unset under ``GridSearchCV`` or
``cross_val_score``, which fit many times). ``callbacks`` go to every fit (scikit-learn's
``clone`` deep-copies them).

**Pickling** never stores the API key: ``__getstate__`` drops it, and an unpickled
estimator reads ``BBT_API_KEY`` (environment or ``.env``) when it first predicts. Predictions
go through the service's prompt registry when it has one (the prompt is stored once, then
named by id), else the prompt is uploaded with each request (``use_registry``).
"""

from __future__ import annotations

import weakref
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from bbt.tuner import (
    Example,
    Task,
    TuneConfig,
    TunedPrompt,
    get_preset,
    sample_k_shot,
    softmax,
    tune,
)
from bbt.tuner.config import (
    DEFAULT_ALPHA,
    DEFAULT_BUDGET,
    DEFAULT_DIM,
    DEFAULT_EVAL_EVERY,
    DEFAULT_LOSS,
    DEFAULT_N_TOKENS,
    DEFAULT_POPSIZE,
    DEFAULT_SEED,
    DEFAULT_SIGMA,
)
from bbt.tuner.templates import template_kind

#: Inputs sent to the service per request when predicting.
PREDICT_BATCH = 64
#: The estimator's parameters that are :class:`~bbt.tuner.TuneConfig` fields, and the
#: field each sets (``d`` is the estimator's name for ``dim``, scikit-learn style).
_CONFIG_PARAMS = {
    "n_tokens": "n_tokens",
    "d": "dim",
    "popsize": "popsize",
    "sigma": "sigma",
    "alpha": "alpha",
    "budget": "budget",
    "loss": "loss",
    "eval_every": "eval_every",
    "seed": "seed",
}
#: Each estimator's live objects (its service and bound TunedPrompt), kept outside its
#: ``__dict__``: predicting leaves the estimator's state as fit left it (a scikit-learn
#: rule), and neither pickling nor cloning carries a connection along.
_LIVE: weakref.WeakKeyDictionary[Any, dict[str, Any]] = weakref.WeakKeyDictionary()


class BBTClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """A text classifier whose only trained parameters are a soft prompt, tuned without
    gradients against a language model served as an API (see the module docstring)."""

    def __init__(
        self,
        task: str | None = None,
        template: str | None = None,
        verbalizer: Mapping[Any, str] | Sequence[str] | str | None = None,
        *,
        n_tokens: int = DEFAULT_N_TOKENS,
        d: int = DEFAULT_DIM,
        budget: int = DEFAULT_BUDGET,
        popsize: int = DEFAULT_POPSIZE,
        sigma: float = DEFAULT_SIGMA,
        alpha: float = DEFAULT_ALPHA,
        loss: str = DEFAULT_LOSS,
        eval_every: int = DEFAULT_EVAL_EVERY,
        seed: int = DEFAULT_SEED,
        k_shot: int | None = None,
        dev_k: int | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        mock: bool = False,
        mock_hidden_size: int = 64,
        use_registry: bool = True,
        run_dir: str | None = None,
        callbacks: Sequence[Any] | None = None,
    ) -> None:
        self.task = task
        self.template = template
        self.verbalizer = verbalizer
        self.n_tokens = n_tokens
        self.d = d
        self.budget = budget
        self.popsize = popsize
        self.sigma = sigma
        self.alpha = alpha
        self.loss = loss
        self.eval_every = eval_every
        self.seed = seed
        self.k_shot = k_shot
        self.dev_k = dev_k
        self.base_url = base_url
        self.api_key = api_key
        self.model = model
        self.mock = mock
        self.mock_hidden_size = mock_hidden_size
        self.use_registry = use_registry
        self.run_dir = run_dir
        self.callbacks = callbacks

    # ------------------------------------------------------------------ scikit-learn API

    def fit(self, X: Any, y: Any) -> BBTClassifier:  # noqa: N803 (scikit-learn names)
        """Tune a soft prompt on texts ``X`` with labels ``y``."""
        self._drop_live()
        rows, y_arr = self._rows(X, reset=True, y=y)
        check_classification_targets(y_arr)
        classes, y_idx = np.unique(y_arr, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                f"the number of classes has to be greater than one; got 1 class ({classes[0]!r})"
            )
        task = self._make_task(classes)
        examples = [
            Example(values, int(i))
            for values, i in zip(self._inputs(task, rows), y_idx, strict=True)
        ]
        if self.k_shot is None:
            train, dev = examples, examples
        else:
            train, dev = sample_k_shot(
                examples, self.k_shot, self.seed, len(classes), dev_k=self.dev_k
            )
        config = TuneConfig(
            **{field: getattr(self, name) for name, field in _CONFIG_PARAMS.items()}
        )
        service = self._open_service()
        result = tune(
            service,
            task,
            train,
            dev,
            config,
            run_dir=self.run_dir,
            callbacks=list(self.callbacks or ()),
            base_url=self.base_url,
            plot=False,
        )
        manifest = result.manifest or {}
        self.classes_ = classes
        self.task_ = task
        self.prompt_ = np.asarray(result.prompt, dtype=np.float32)
        self.model_id_ = str(manifest["model"]["id"])
        self.candidate_ids_ = [int(i) for i in manifest["candidate_ids"]]
        self.dev_score_ = result.dev_metric
        self.n_calls_ = int(result.calls)
        return self

    def predict_proba(self, X: Any) -> np.ndarray[Any, Any]:  # noqa: N803 (scikit-learn names)
        """Class probabilities [n, n_classes]: softmax of the verbalizer logits."""
        logits = self.decision_logits(X)
        return np.asarray(softmax(logits.astype(np.float64)), dtype=np.float64)

    def predict(self, X: Any) -> np.ndarray[Any, Any]:  # noqa: N803 (scikit-learn names)
        """The most probable class of each input."""
        idx = np.argmax(self.decision_logits(X), axis=1)
        out: np.ndarray[Any, Any] = self.classes_[idx]
        return out

    def decision_logits(self, X: Any) -> np.ndarray[Any, Any]:  # noqa: N803 (scikit-learn names)
        """Verbalizer logits [n, n_classes] under the tuned prompt."""
        check_is_fitted(self, "prompt_")
        rows, _ = self._rows(X, reset=False)
        tp = self.tuned_prompt()
        inputs: list[Any] = self._inputs(self.task_, rows)
        parts = [
            np.asarray(tp.logits(inputs[i : i + PREDICT_BATCH]), dtype=np.float64)
            for i in range(0, len(inputs), PREDICT_BATCH)
        ]
        return np.concatenate(parts, axis=0)

    def tuned_prompt(self) -> TunedPrompt:
        """The fitted prompt as a :class:`~bbt.tuner.TunedPrompt`, bound to the service
        (``tuned_prompt().last_path`` says whether the last prediction went by registry id
        or by upload)."""
        check_is_fitted(self, "prompt_")
        live = _LIVE.setdefault(self, {})
        tuned: TunedPrompt | None = live.get("tuned")
        if tuned is None:
            tuned = TunedPrompt(
                self.prompt_,
                self.task_,
                self.model_id_,
                self.candidate_ids_,
                service=self._open_service(),
                use_registry=self.use_registry,
            )
            live["tuned"] = tuned
        return tuned

    def bind(self, service: Any) -> BBTClassifier:
        """Fit and predict through ``service`` (a :class:`bbt.client.Service` you built, e.g.
        a ``bbt.Client`` with its own transport) instead of the one the parameters name.
        Kept outside the estimator's state: not pickled, not cloned."""
        _LIVE[self] = {"service": service, "where": "bound"}
        return self

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.string = True
        # A few-shot prompt on a mock model does not reach the accuracy the checks ask of
        # numeric toy data (whose numbers the model reads as words).
        tags.classifier_tags.poor_score = True
        return tags

    # ------------------------------------------------------------------ pickling, repr

    def __getstate__(self) -> dict[str, Any]:
        state: dict[str, Any] = dict(super().__getstate__())
        state["api_key"] = None  # never stored; BBT_API_KEY supplies it when predicting
        return state

    def _masked(self) -> BBTClassifier:
        """A shallow copy whose ``api_key`` reads ``***``, for every display of the estimator."""
        shown = object.__new__(type(self))
        shown.__dict__.update(self.__dict__)
        shown.api_key = "***"
        return shown

    def __repr__(self, N_CHAR_MAX: int = 700) -> str:  # noqa: N803 (scikit-learn names)
        if self.api_key is None:
            return str(super().__repr__(N_CHAR_MAX))
        return str(BaseEstimator.__repr__(self._masked(), N_CHAR_MAX))

    def _repr_html_(self) -> str:
        # Notebooks show the HTML diagram, which lists the parameters: mask the key there too.
        shown = self if self.api_key is None else self._masked()
        return str(BaseEstimator._repr_html_inner(shown))

    def _repr_mimebundle_(self, **kwargs: Any) -> dict[str, Any]:
        shown = self if self.api_key is None else self._masked()
        return dict(BaseEstimator._repr_mimebundle_(shown, **kwargs))

    # ------------------------------------------------------------------ helpers

    def _rows(self, X: Any, *, reset: bool, y: Any = None) -> tuple[list[list[str]], Any]:  # noqa: N803 (scikit-learn names)
        """``X`` as rows of one or two texts (and ``y`` checked, when fitting); sets or
        checks ``n_features_in_`` and ``feature_names_in_`` as scikit-learn does."""
        if isinstance(X, str):
            raise ValueError("X must be a sequence of texts, not one string")
        if _is_text_list(X):  # a plain list (or 1-d array, Series) of texts: one column
            X = np.asarray(list(X), dtype=object)[:, None]  # noqa: N806
        if reset:
            arr, y = validate_data(self, X, y, dtype=None, y_numeric=False)
        else:
            arr = validate_data(self, X, reset=False, dtype=None)
        rows = []
        for row in arr:
            if any(v is None for v in row):
                raise ValueError("Input X contains None: texts expected")
            rows.append([str(v) for v in row])
        return rows, y

    def _inputs(self, task: Task, rows: list[list[str]]) -> list[dict[str, str]]:
        """Template field values of each row: one column per field, or, for a one-field
        template, all of a row's cells joined by a space."""
        fields = task.fields
        if len(fields) == 1:
            return [{fields[0]: " ".join(row)} for row in rows]
        if rows and len(rows[0]) != len(fields):
            raise ValueError(
                f"task {task.name!r} reads {len(fields)} texts per example "
                f"({', '.join(fields)}); X has {len(rows[0])} column(s)"
            )
        return [dict(zip(fields, row, strict=True)) for row in rows]

    def _make_task(self, classes: np.ndarray[Any, Any]) -> Task:
        base = get_preset(self.task) if self.task is not None else None
        if base is None and self.mock and self.template is None:
            base = get_preset("mock")
        template = self.template or (base.template if base is not None else None)
        if template is None:
            raise ValueError("BBTClassifier needs task= (a preset) or template= (with {mask})")
        labels = tuple(str(c) for c in classes)
        words = self._words(classes, base)
        if base is not None and self.template is None and words == base.words:
            # The preset as it is, classes renamed: its decoder twin stays usable.
            return replace(base, labels=labels, aliases={})
        return Task(
            name=base.name if base is not None else "sklearn",
            template=template,
            labels=labels,
            words=words,
            kind=template_kind(template),
        )

    def _words(self, classes: np.ndarray[Any, Any], base: Task | None) -> tuple[str, ...]:
        n = len(classes)
        spec = self.verbalizer
        if spec is None:
            if base is None or len(base.words) != n:
                have = "" if base is None else f" (task {base.name!r} has {len(base.words)})"
                raise ValueError(f"give verbalizer= with one word for each of {n} classes{have}")
            return base.words
        if isinstance(spec, str):
            table: Mapping[Any, str] = dict(
                (k.strip(), v.strip()) for k, _, v in (i.partition("=") for i in spec.split(","))
            )
            keys = [str(c) for c in classes]
        elif isinstance(spec, Mapping):
            table, keys = spec, list(classes)
        else:
            words = tuple(str(w) for w in spec)
            if len(words) < n:
                raise ValueError(f"verbalizer has {len(words)} words for {n} classes")
            return words[:n]
        missing = [str(k) for k in keys if k not in table]
        if missing:
            raise ValueError(f"verbalizer has no word for class(es) {', '.join(missing)}")
        return tuple(str(table[k]) for k in keys)

    def _open_service(self) -> Any:
        live = _LIVE.setdefault(self, {})
        where = (self.mock, self.mock_hidden_size, self.base_url, self.api_key, self.model)
        svc = live.get("service")
        if svc is not None and live.get("where") in (where, "bound"):
            return svc
        if self.mock:
            from bbt.client import LocalClient
            from bbt.server.mock import MockBackend

            svc = LocalClient(MockBackend(hidden_size=self.mock_hidden_size))
        else:
            from bbt.client import Client, ClientSettings

            settings = ClientSettings(
                base_url=self.base_url,
                api_key=self.api_key,
                model=self.model,
            )
            svc = Client.from_settings(settings)
        live["service"], live["where"] = svc, where
        return svc

    def _drop_live(self) -> None:
        """Forget the bound prompt (a new fit makes a new one); the service stays."""
        _LIVE.get(self, {}).pop("tuned", None)


def _is_text_list(X: Any) -> bool:  # noqa: N803 (scikit-learn names)
    """Whether ``X`` is one column of texts given as a 1-d sequence (not a 2-d table)."""
    if hasattr(X, "columns") or not hasattr(X, "__len__") or len(X) == 0:
        return False
    if np.ndim(X) != 1:
        return False
    return all(isinstance(v, str) for v in X)
