"""The readout of the logit route: from verbalizer logits to class scores.

By default a class is scored by the logit of its one verbalizer word (the task's). A run
may instead name **several label words per class** (``label_words``): the class score is
then the log-sum-exp of its words' logits, i.e. the log of the summed (unnormalised)
probability of the class's words. With **contextual calibration** (``calibrate``; Zhao et
al., 2021) the same prompt also scores a content-free input (every field ``"N/A"``) and
its class log-probabilities are subtracted from each input's: p(c | x) / p(c | N/A),
renormalised. A **label-word search** (``search_label_words``) picks the words per class
from a candidate list by how much likelier the training shots of the class make them than
the shots of the other classes, under p0.

Everything here works on logits the service returns; nothing on the wire changes. With one
word per class and no calibration the readout is the identity: the logits come back
unchanged, bit for bit (and a run without these options never builds a readout at all).

A label-word spec is ``LABEL=WORD|WORD,LABEL=WORD``: a label by name or index, then its
words separated by ``|``. Searched words are recorded in the run as such a spec, so
``bbt eval``, ``bbt predict`` and ``resume`` read exactly the words the run tuned with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bbt.client import Service
from bbt.errors import TaskError
from bbt.tuner.evaluator import Evaluator
from bbt.tuner.templates import MASK_FIELD

if TYPE_CHECKING:
    from bbt.tuner.tasks import Task

F32 = np.ndarray[Any, np.dtype[np.float32]]

#: What the fields of the content-free input hold (Zhao et al., 2021 use "N/A").
CONTENT_FREE = "N/A"

#: Candidate label words the search draws from when a run names none: common English words
#: for topics and sentiment (single tokens for most tokenisers; the others are skipped).
DEFAULT_CANDIDATES: tuple[str, ...] = (
    "world", "politics", "war", "government", "global", "international", "news", "country",
    "president", "military", "election", "peace", "sports", "sport", "game", "team", "football",
    "soccer", "baseball", "basketball", "match", "player", "season", "coach", "business",
    "economy", "market", "company", "money", "finance", "stock", "trade", "bank", "profit",
    "oil", "sales", "science", "technology", "tech", "computer", "software", "internet",
    "research", "space", "phone", "web", "digital", "health", "great", "good", "bad",
    "terrible", "awful", "excellent", "wonderful", "fine", "poor", "positive", "negative",
    "perfect", "boring", "fun", "nice", "best", "worst", "love", "hate", "amazing", "horrible",
    "brilliant", "dull", "funny", "sad", "happy", "beautiful", "ugly", "yes", "no", "true",
    "false", "right", "wrong", "maybe", "never", "always",
)  # fmt: skip

__all__ = [
    "CONTENT_FREE",
    "DEFAULT_CANDIDATES",
    "Readout",
    "ReadoutEvaluator",
    "attach_readout",
    "build_readout",
    "calibrate_scores",
    "class_scores",
    "format_label_words",
    "parse_label_words",
    "pool_logits",
    "search_label_words",
]


def parse_label_words(spec: str, labels: Sequence[str]) -> tuple[tuple[str, ...], ...]:
    """``LABEL=WORD|WORD,...`` as one tuple of words per class, in label order. Every class
    needs at least one word; a label is its name or its index."""
    out: dict[int, list[str]] = {}
    for item in (s for s in spec.split(",") if s.strip()):
        label, sep, words = item.partition("=")
        label = label.strip()
        if not sep:
            raise TaskError(f"cannot read label-words item {item!r}; write LABEL=WORD|WORD,...")
        if label in labels:
            index = labels.index(label)
        elif label.isdigit() and int(label) < len(labels):
            index = int(label)
        else:
            raise TaskError(f"label-words: unknown label {label!r}; labels: {', '.join(labels)}")
        got = [w for w in words.split("|") if w.strip()]
        if not got:
            raise TaskError(f"label-words: label {label!r} has no word")
        out.setdefault(index, []).extend(got)
    missing = [labels[i] for i in range(len(labels)) if i not in out]
    if missing:
        raise TaskError(f"label-words: no word for label(s) {', '.join(missing)}")
    return tuple(tuple(out[i]) for i in range(len(labels)))


def format_label_words(labels: Sequence[str], words: Sequence[Sequence[str]]) -> str:
    """The spec :func:`parse_label_words` reads back (labels by index: names may hold ``=``)."""
    if len(words) != len(labels):
        raise ValueError(f"{len(words)} word groups for {len(labels)} labels")
    return ",".join(f"{i}={'|'.join(ws)}" for i, ws in enumerate(words))


def class_scores(logits: np.ndarray[Any, Any], groups: Sequence[Sequence[int]]) -> F32:
    """``[..., W]`` word logits to ``[..., C]`` class scores: the log-sum-exp over each
    class's columns (``groups[c]``). A class of one word keeps that word's logit exactly."""
    x = np.asarray(logits, dtype=np.float32)
    cols = []
    for group in groups:
        g = x[..., list(group)]
        if g.shape[-1] == 1:
            cols.append(g[..., 0])
            continue
        top = np.max(g, axis=-1, keepdims=True)
        safe = np.where(np.isfinite(top), top, np.float32(0))
        lse = np.log(np.sum(np.exp(g - safe), axis=-1)) + safe[..., 0]
        cols.append(lse.astype(np.float32))
    return np.stack(cols, axis=-1).astype(np.float32, copy=False)


def _log_softmax(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    x = np.asarray(x, dtype=np.float64)
    top = np.max(x, axis=-1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    out: np.ndarray[Any, Any] = x - top - np.log(np.sum(np.exp(x - top), axis=-1, keepdims=True))
    return out


def calibrate_scores(scores: np.ndarray[Any, Any], content_free: np.ndarray[Any, Any]) -> F32:
    """Contextual calibration: ``log p(c|x) - log p(c|N/A)``, renormalised over classes.
    ``scores`` is ``[..., B, C]``, ``content_free`` ``[..., C]`` (one row per prompt). When
    the content-free scores are uniform this is ``log p(c|x)``: the same predictions and
    losses as the uncalibrated scores."""
    shifted = _log_softmax(scores) - _log_softmax(content_free)[..., None, :]
    return _log_softmax(shifted).astype(np.float32)


@dataclass(frozen=True)
class Readout:
    """Resolved readout of one run on one service: the word ids to ask for (``ids``), which
    of them make each class (``groups``, indices into ``ids``), and the content-free text
    (rendered for the served model) when calibrating."""

    ids: tuple[int, ...]
    groups: tuple[tuple[int, ...], ...]
    content_free: str | None = None

    @property
    def identity(self) -> bool:
        return self.content_free is None and all(len(g) == 1 for g in self.groups)

    def request(self, texts: Sequence[str]) -> tuple[list[str], list[int]]:
        """The texts and candidate ids to send for ``texts`` (the content-free text last)."""
        extra = [self.content_free] if self.content_free is not None else []
        return [*texts, *extra], list(self.ids)

    def reduce(self, logits: np.ndarray[Any, Any]) -> F32:
        """The ``[..., B', W]`` answer to :meth:`request` as ``[..., B, C]`` class scores."""
        scores = class_scores(logits, self.groups)
        if self.content_free is None:
            return scores
        return calibrate_scores(scores[..., :-1, :], scores[..., -1, :])


class ReadoutEvaluator(Evaluator):
    """An evaluator whose logits go through a :class:`Readout`: it asks ``inner`` for the
    readout's words (and the content-free text) and hands back class scores ``[P, B, C]``;
    the ``candidate_ids`` the tuner passes (one per class) are replaced by the readout's."""

    def __init__(self, inner: Evaluator, readout: Readout) -> None:
        self.inner = inner
        self.readout = readout

    def logits(
        self, z: np.ndarray[Any, Any], texts: Sequence[str], candidate_ids: Sequence[int]
    ) -> F32:
        sent, ids = self.readout.request(texts)
        return self.readout.reduce(self.inner.logits(z, sent, ids))

    def prompts(self, z: np.ndarray[Any, Any]) -> F32:
        return self.inner.prompts(z)

    def close(self) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:  # session, projection, p0: the inner one's
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


# --------------------------------------------------------------------------- word ids


def _word_forms(task: Task, words: Sequence[str]) -> list[str]:
    """Each word as the served model sees it at the verbalizer position: masked with a
    leading space when the template has one before the mask, causal with the leading space
    the task's own words use."""
    if task.kind == "causal_lm":
        spaced = any(w.startswith(" ") for w in task.words)
        return [(" " + w.strip()) if spaced else w.strip() for w in words]
    before = task.template.split("{" + MASK_FIELD + "}", 1)[0]
    spaced = bool(before) and before[-1].isspace()
    return [(" " + w.strip()) if spaced else w.strip() for w in words]


def single_token_ids(task: Task, service: Service, words: Sequence[str]) -> list[int | None]:
    """The one token id of each word at the verbalizer position (one tokenize call), None
    for a word that is several tokens there (or merges with the template's end)."""
    forms = _word_forms(task, words)
    if task.kind != "causal_lm":
        resp = service.tokenize(forms)
        return [ids[0] if len(ids) == 1 else None for ids in resp.ids]
    from bbt.tuner.verbalizers import _template_tail

    anchor = _template_tail(task.template) or "."
    resp = service.tokenize([anchor] + [anchor + f for f in forms])
    base = resp.ids[0]
    out: list[int | None] = []
    for got in resp.ids[1:]:
        ok = got[: len(base)] == base and len(got) == len(base) + 1
        out.append(got[-1] if ok else None)
    return out


def _resolve_words(
    task: Task, service: Service, words: Sequence[Sequence[str]]
) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
    flat = [w for ws in words for w in ws]
    got = single_token_ids(task, service, flat)
    bad = [w for w, i in zip(flat, got, strict=True) if i is None]
    if bad:
        raise TaskError(
            f"label words {', '.join(repr(w) for w in bad)} are not one token each for model "
            f"{service.model_info().id!r}; choose single-token words"
        )
    ids: list[int] = []
    groups: list[tuple[int, ...]] = []
    for ws in words:
        group = []
        for w in ws:
            tid = got[flat.index(w)]
            assert tid is not None
            if tid in ids:
                raise TaskError(f"label word {w!r} appears twice (token id {tid})")
            ids.append(tid)
            group.append(len(ids) - 1)
        groups.append(tuple(group))
    return tuple(ids), tuple(groups)


# --------------------------------------------------------------------------- search


def search_label_words(
    scores: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    words: Sequence[str],
    num_classes: int,
    per_class: int,
) -> tuple[tuple[str, ...], ...]:
    """Pick ``per_class`` words per class from ``words`` by the training shots' logits
    ``scores`` [B, V] (one column per word, under p0). Each word is scored for each class
    by the mean log-probability (softmax over the V words) the shots of the class give it
    minus the mean over the other shots, goes to its best class, and each class keeps its
    highest-scoring words (a tie keeps the earlier word)."""
    lp = _log_softmax(scores)
    labels = np.asarray(labels)
    gain = np.zeros((num_classes, lp.shape[1]))
    for c in range(num_classes):
        inside, outside = labels == c, labels != c
        if not inside.any():
            raise TaskError(f"label-word search: no training shot of class {c}")
        rest = lp[outside].mean(axis=0) if outside.any() else 0.0
        gain[c] = lp[inside].mean(axis=0) - rest
    owner = np.argmax(gain, axis=0)
    picked = []
    for c in range(num_classes):
        mine = [v for v in np.argsort(-gain[c], kind="stable") if owner[v] == c]
        if not mine:  # no word prefers this class: take its best one anyway
            mine = [int(np.argsort(-gain[c], kind="stable")[0])]
        picked.append(tuple(words[int(v)] for v in mine[:per_class]))
    return tuple(picked)


def build_readout(
    task: Task,
    service: Service,
    label_words: str | None,
    calibrate: bool,
) -> Readout | None:
    """The readout a run's options ask for, resolved on ``service`` (``task`` already for
    the served kind); None when they ask for the default (the task's one word per class)."""
    if label_words is None and not calibrate:
        return None
    if label_words is not None:
        ids, groups = _resolve_words(task, service, parse_label_words(label_words, task.labels))
    else:
        ids, groups = _resolve_words(task, service, [(w,) for w in task.words])
    cf = None
    if calibrate:
        cf = task.render_for(service.model_info(), dict.fromkeys(task.fields, CONTENT_FREE))
    return Readout(ids, groups, cf)


def candidate_pool(
    task: Task, service: Service, label_words: str | None
) -> tuple[list[str], list[int]]:
    """The search's candidate words that are one token for the model, with their ids: the
    words ``label_words`` names (all classes pooled), else :data:`DEFAULT_CANDIDATES` and
    the task's own words."""
    if label_words is not None:
        pool = [w for ws in parse_label_words(label_words, task.labels) for w in ws]
    else:
        pool = [w.strip() for w in task.words] + list(DEFAULT_CANDIDATES)
    seen: dict[int, str] = {}
    for w, tid in zip(pool, single_token_ids(task, service, pool), strict=True):
        if tid is not None and tid not in seen:
            seen[tid] = w.strip()
    return list(seen.values()), list(seen)


def pool_logits(
    service: Service, prompt: np.ndarray[Any, Any], texts: Sequence[str], ids: Sequence[int]
) -> F32:
    """Logits ``[B, V]`` of one prompt (``[1, ...]``) at many candidate ids, asked in slices
    of the service's ``max_candidates``: one call's worth of prompts, several requests."""
    step = service.model_info().limits.max_candidates
    parts = [
        service.logits(prompt, list(texts), list(ids[i : i + step]))[0]
        for i in range(0, len(ids), step)
    ]
    return np.concatenate(parts, axis=-1).astype(np.float32, copy=False)


def attach_readout(tuner: Any) -> Any:
    """Give ``tuner`` the readout its config asks for (a no-op for the default one): search
    the label words first when asked (one call: p0 on the training shots, counted in the
    service's usage), record them in ``tuner.config.label_words`` (what the manifest keeps,
    so resume, eval and predict read the same words), and wrap its evaluator."""
    from dataclasses import replace

    cfg = tuner.config
    task = tuner.task.for_kind(tuner.model_info.kind, tuner.model_info.id)
    label_words = cfg.label_words
    if cfg.search_label_words > 0:
        words, ids = candidate_pool(task, tuner.service, label_words)
        p0 = np.asarray(tuner.p0, dtype=np.float32)[None]
        scores = pool_logits(tuner.service, p0, tuner.train_texts, ids)
        chosen = search_label_words(
            scores, tuner.train_labels, words, task.num_classes, cfg.search_label_words
        )
        label_words = format_label_words(task.labels, chosen)
        tuner.config = replace(cfg, label_words=label_words, search_label_words=0)
    readout = build_readout(task, tuner.service, label_words, cfg.calibrate)
    if readout is not None:
        tuner.evaluator = ReadoutEvaluator(tuner.evaluator, readout)
    return tuner
