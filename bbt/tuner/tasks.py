"""Tasks: a template with input fields and one mask, and a verbalizer (label -> word).

The presets are the seven tasks of Sun et al. (ICML 2022, Table 1 and their released code):
templates and label words as in the paper, written with ``{mask}`` where the model's mask
token goes and ``{field}`` for each input column. Evaluation metrics follow the paper:
F1 for MRPC, accuracy for the others.

A task targets a kind of model (``ModelInfo.kind``). A masked-LM template holds ``{mask}``;
a causal-LM (decoder) template has none and *ends where the label word comes*, e.g.
``Review: {text}\nSentiment:`` with the words ``" negative"`` / ``" positive"`` (the leading
space belongs to the word: it is part of the token a decoder predicts). A task may carry both:
its ``template``/``words`` for its ``kind`` plus a ``causal_template``/``causal_words`` twin;
:meth:`Task.for_kind` picks the one matching the served model. The presets carry both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bbt.client import Service
from bbt.errors import TaskError
from bbt.protocol import ModelInfo, ModelKind
from bbt.tuner.templates import (
    KIND_NAMES,
    MASK_FIELD,
    check_words,
    template_fields,
    template_kind,
)
from bbt.tuner.verbalizers import causal_verbalizer_ids, masked_verbalizer_ids

Metric = Literal["accuracy", "f1"]
METRICS: tuple[Metric, ...] = ("accuracy", "f1")


@dataclass(frozen=True)
class Task:
    """A prompt-based classification task.

    ``labels`` are the class names in index order; ``words[i]`` is the verbalizer word of
    class i. ``aliases`` maps other spellings found in data files (e.g. ``entailment``) to
    a class index. ``kind`` is the kind of model ``template`` and ``words`` are written for
    (``masked_lm``: the template holds ``{mask}``; ``causal_lm``: it ends where the word
    comes, and each word is appended to the text as written, leading space included). A
    masked task may also carry a ``causal_template`` with ``causal_words`` (default: each word
    with a leading space) for decoders; :meth:`for_kind` picks the right pair.
    """

    name: str
    template: str
    labels: tuple[str, ...]
    words: tuple[str, ...]
    metric: Metric = "accuracy"
    aliases: Mapping[str, int] = field(default_factory=dict)
    label_column: str = "label"
    kind: ModelKind = "masked_lm"
    causal_template: str | None = None
    causal_words: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        template_fields(self.template, self.kind)
        if len(self.labels) < 2:
            raise TaskError(f"task {self.name!r} needs at least two labels")
        check_words(self.name, self.labels, self.words, "verbalizer words")
        if len({lab.casefold() for lab in self.labels}) != len(self.labels):
            raise TaskError(f"task {self.name!r}: label names must be distinct")
        if self.metric not in METRICS:
            raise TaskError(f"unknown metric {self.metric!r}; choose accuracy or f1")
        if self.causal_template is None:
            if self.causal_words is not None:
                raise TaskError(f"task {self.name!r}: causal_words need a causal_template")
            return
        if self.kind == "causal_lm":
            raise TaskError(
                f"task {self.name!r}: its template is already for causal LMs; causal_template "
                "is the decoder twin of a masked task's template"
            )
        template_fields(self.causal_template, "causal_lm")
        if self.causal_words is None:
            object.__setattr__(self, "causal_words", tuple(" " + w for w in self.words))
        else:
            check_words(self.name, self.labels, tuple(self.causal_words), "causal_words")

    @property
    def fields(self) -> tuple[str, ...]:
        return template_fields(self.template, self.kind)

    @property
    def kinds(self) -> tuple[ModelKind, ...]:
        """The kinds of model this task has a template for."""
        return (self.kind, "causal_lm") if self.causal_template is not None else (self.kind,)

    def for_kind(self, kind: ModelKind, model: str | None = None) -> Task:
        """This task as rendered for a ``kind`` model: itself, or its causal twin.

        Raises TaskError, naming ``model`` when given, if the task has no template for it.
        """
        if kind == self.kind:
            return self
        if kind == "causal_lm" and self.causal_template is not None:
            assert self.causal_words is not None  # filled in by __post_init__
            return Task(
                name=self.name,
                template=self.causal_template,
                labels=self.labels,
                words=tuple(self.causal_words),
                metric=self.metric,
                aliases=self.aliases,
                label_column=self.label_column,
                kind="causal_lm",
            )
        served = f"model {model!r} is a {KIND_NAMES.get(kind, kind)}" if model else kind
        if kind == "causal_lm":
            fix = (
                "give it a decoder template that ends where the label word comes: "
                "'causal_template' (and 'causal_words') in a task file, or --template without "
                "{mask}, e.g. --template $'Review: {text}\\nSentiment:' "
                "--verbalizer '0= negative,1= positive'"
            )
        else:
            fix = "give it a template with {mask}"
        raise TaskError(
            f"task {self.name!r} has no template for a {KIND_NAMES.get(kind, kind)} "
            f"({served}; the task is written for: "
            f"{', '.join(KIND_NAMES[k] for k in self.kinds)}); {fix}"
        )

    def render_for(self, info: ModelInfo, values: Mapping[str, str]) -> str:
        """The model input for one example, with the template matching ``info.kind``."""
        view = self.for_kind(info.kind, info.id)
        return view.render(values, info.mask_token, info.limits.max_text_chars)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def verbalizer(self) -> dict[str, str]:
        return dict(zip(self.labels, self.words, strict=True))

    def render(
        self, values: Mapping[str, str], mask_token: str | None, max_chars: int | None = None
    ) -> str:
        """The model input for one example. Field values longer than the server allows are cut
        (each field gets an equal share of the room the template leaves). ``mask_token`` is
        unused by a causal template (pass None)."""
        if self.kind == "masked_lm" and mask_token is None:
            raise TaskError(
                f"task {self.name!r} has a masked-LM template but the model has no mask token"
            )
        mask_token = mask_token or ""
        fields = self.fields
        missing = [f for f in fields if f not in values]
        if missing:
            raise TaskError(f"example lacks field(s) {', '.join(missing)} needed by the template")
        vals = {f: str(values[f]) for f in fields}
        if max_chars is not None:
            overhead = len(self.template.format(mask=mask_token, **{f: "" for f in fields}))
            room = max_chars - overhead
            if room < len(fields):
                raise TaskError(
                    f"template {self.template!r} leaves no room under {max_chars} chars"
                )
            if sum(len(v) for v in vals.values()) > room:
                share = room // len(fields)
                vals = {f: v[:share] for f, v in vals.items()}
        return self.template.format(mask=mask_token, **vals)

    def label_index(self, raw: object) -> int:
        """Normalise a label from a data file: an index, a label name, a verbalizer word or an
        alias (names compared case-insensitively)."""
        if isinstance(raw, bool):
            raise TaskError(f"label {raw!r} is not a class of task {self.name!r}")
        if isinstance(raw, int):
            idx = raw
        elif isinstance(raw, float) and raw.is_integer():
            idx = int(raw)
        else:
            text = str(raw).strip()
            key = text.casefold()
            # Words compared without their leading space: a data file says "positive" for
            # a decoder word " positive". Either kind's word names the class.
            twin = self.causal_words or self.words
            for i, (lab, word, other) in enumerate(zip(self.labels, self.words, twin, strict=True)):
                if key in (lab.casefold(), word.strip().casefold(), other.strip().casefold()):
                    return i
            for alias, i in self.aliases.items():
                if key == alias.casefold():
                    return i
            try:
                idx = int(text)
            except ValueError:
                raise TaskError(
                    f"unknown label {text!r} for task {self.name!r}; expected an index "
                    f"0..{self.num_classes - 1} or one of {', '.join(self.labels)}"
                ) from None
        if not 0 <= idx < self.num_classes:
            raise TaskError(
                f"label {idx} is out of range for task {self.name!r} "
                f"({self.num_classes} classes: 0..{self.num_classes - 1})"
            )
        return idx

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "template": self.template,
            "labels": list(self.labels),
            "words": list(self.words),
            "metric": self.metric,
            "aliases": dict(self.aliases),
            "label_column": self.label_column,
        }
        if self.causal_template is not None:
            out["causal_template"] = self.causal_template
            out["causal_words"] = list(self.causal_words or ())
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        """A task from :meth:`as_dict`'s keys; ``kind``, when absent, is read off the template
        (``{mask}`` present: masked_lm, else causal_lm), so older manifests still load."""
        try:
            template = str(data["template"])
            causal_words = data.get("causal_words")
            return cls(
                name=str(data.get("name", "custom")),
                template=template,
                labels=tuple(str(x) for x in data["labels"]),
                words=tuple(str(x) for x in data["words"]),
                metric=data.get("metric", "accuracy"),
                aliases={str(k): int(v) for k, v in dict(data.get("aliases", {})).items()},
                label_column=str(data.get("label_column", "label")),
                kind=data.get("kind") or template_kind(template),
                causal_template=(
                    None if data.get("causal_template") is None else str(data["causal_template"])
                ),
                causal_words=(
                    None if causal_words is None else tuple(str(x) for x in causal_words)
                ),
            )
        except KeyError as exc:
            raise TaskError(f"task definition lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise TaskError(f"task definition is malformed: {exc}") from None


def parse_verbalizer(
    spec: str, *, keep_leading_space: bool = False
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``0=bad,1=great`` or ``negative=bad,positive=great`` -> (labels, words). Labels that are
    all integers must be 0..C-1 and are sorted; names keep the order given. With
    ``keep_leading_space`` (causal tasks: ``0= negative,1= positive``) one leading space of
    each word is kept, since a decoder's word token carries it."""
    pairs: list[tuple[str, str]] = []
    for item in spec.split(","):
        label, sep, word = item.partition("=")
        if not sep or not label.strip() or not word.strip():
            raise TaskError(f"cannot read verbalizer item {item!r}; write LABEL=WORD,LABEL=WORD")
        stripped = word.strip()
        if keep_leading_space and word[:1].isspace():
            stripped = " " + stripped
        pairs.append((label.strip(), stripped))
    if all(lab.isdigit() for lab, _ in pairs):
        pairs.sort(key=lambda p: int(p[0]))
        if [int(lab) for lab, _ in pairs] != list(range(len(pairs))):
            raise TaskError(f"integer labels in {spec!r} must be 0..{len(pairs) - 1}")
    return tuple(lab for lab, _ in pairs), tuple(w for _, w in pairs)


def custom_task(
    template: str, verbalizer: str, name: str = "custom", metric: Metric = "accuracy"
) -> Task:
    """A task from CLI flags (``--template``, ``--verbalizer``). A template with ``{mask}`` is
    for masked LMs, one without for causal LMs (whose words keep a leading space)."""
    kind = template_kind(template)
    labels, words = parse_verbalizer(verbalizer, keep_leading_space=kind == "causal_lm")
    return Task(name=name, template=template, labels=labels, words=words, metric=metric, kind=kind)


def _parse_toml(raw: bytes) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise TaskError("TOML task files need Python 3.11 or later; use JSON") from None
    return tomllib.loads(raw.decode())


def load_task_file(path: str | Path) -> Task:
    """A task from a JSON or TOML file with keys ``template``, ``labels``/``words`` or
    ``verbalizer`` (a label -> word table), and optionally ``name``, ``kind`` (``masked_lm`` or
    ``causal_lm``; default: read off the template), ``metric``, ``aliases``, ``label_column``,
    and a decoder twin ``causal_template`` with ``causal_words`` or ``causal_verbalizer``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise TaskError(f"cannot read task file {p}: {exc.strerror}") from None
    try:
        data: dict[str, Any] = _parse_toml(raw) if p.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise TaskError(
            f"task file {p} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {exc}"
        ) from None
    if not isinstance(data, dict):
        raise TaskError(f"task file {p} must hold a table/object")
    if not isinstance(data.get("template", ""), str):
        raise TaskError(f"task file {p}: template must be a string")
    kind = data.get("kind") or template_kind(str(data.get("template", "{mask}")))
    for key, words_key, spaced in (
        ("verbalizer", "words", kind == "causal_lm"),
        ("causal_verbalizer", "causal_words", True),
    ):
        if key not in data:
            continue
        verb = data.pop(key)
        if not isinstance(verb, dict):
            raise TaskError(f"task file {p}: {key} must be a table LABEL = WORD")
        labels, words = parse_verbalizer(
            ",".join(f"{k}={v}" for k, v in verb.items()), keep_leading_space=spaced
        )
        data.setdefault("labels", list(labels))
        data.setdefault(words_key, list(words))
    data.setdefault("name", p.stem)
    return Task.from_dict(data)


# --------------------------------------------------------------------------- presets

#: Template and verbalizer of the mock server's built-in sentiment task. Kept in step with
#: ``bbt.server.mock`` (a test checks they agree).
MOCK_TEMPLATE = "{text} It was {mask} ."
MOCK_WORDS = ("bad", "great")
#: The same task for the mock's causal mode (``bbt serve --model mock-causal``).
MOCK_CAUSAL_TEMPLATE = "{text} It was"
MOCK_CAUSAL_WORDS = (" bad", " great")


# Decoder templates end where the label word comes; their words carry the leading space a
# byte-level BPE (GPT-2 "Ġ") or SentencePiece ("▁") model predicts there. The words are
# common English words, one token in the GPT-2 and Llama vocabularies as far as we know; the
# tuner checks each against the served tokenizer and names any that is not.
def _review_sentiment(name: str, field: str) -> Task:
    """A binary review-sentiment task (SST-2, Yelp polarity) on the text field ``field``."""
    return Task(
        name,
        f"{{{field}}} . It was {{mask}} .",
        ("negative", "positive"),
        ("bad", "great"),
        causal_template=f"Review: {{{field}}}\nSentiment:",
        causal_words=(" negative", " positive"),
    )


PRESETS: dict[str, Task] = {
    "sst2": _review_sentiment("sst2", "sentence"),
    "yelp": _review_sentiment("yelp", "text"),
    "agnews": Task(
        "agnews",
        "{mask} News: {text}",
        ("World", "Sports", "Business", "Sci/Tech"),
        ("World", "Sports", "Business", "Tech"),
        aliases={"sci_tech": 3, "science": 3, "technology": 3},
        causal_template="Article: {text}\nTopic:",
        causal_words=(" World", " Sports", " Business", " Tech"),
    ),
    "dbpedia": Task(
        "dbpedia",
        "[ Category: {mask} ] {text}",
        (
            "Company",
            "EducationalInstitution",
            "Artist",
            "Athlete",
            "OfficeHolder",
            "MeanOfTransportation",
            "Building",
            "NaturalPlace",
            "Village",
            "Animal",
            "Plant",
            "Album",
            "Film",
            "WrittenWork",
        ),
        (
            "Company",
            "Education",
            "Artist",
            "Athlete",
            "Office",
            "Transportation",
            "Building",
            "Natural",
            "Village",
            "Animal",
            "Plant",
            "Album",
            "Film",
            "Written",
        ),
        # causal_words default to the words above with a leading space.
        causal_template="Text: {text}\nCategory:",
    ),
    "mrpc": Task(
        "mrpc",
        "{sentence1} ? {mask} , {sentence2}",
        ("not_equivalent", "equivalent"),
        ("No", "Yes"),
        metric="f1",
        causal_template=(
            "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nDo they mean the same? Answer:"
        ),
    ),
    "snli": Task(
        "snli",
        "{premise} ? {mask} , {hypothesis}",
        ("entailment", "neutral", "contradiction"),
        ("Yes", "Maybe", "No"),
        causal_template=(
            "Premise: {premise}\nHypothesis: {hypothesis}\nDoes the premise entail the "
            "hypothesis? Answer:"
        ),
    ),
    "rte": Task(
        "rte",
        "{sentence1} ? {mask} , {sentence2}",
        ("entailment", "not_entailment"),
        ("Yes", "No"),
        causal_template=(
            "Premise: {sentence1}\nHypothesis: {sentence2}\nDoes the premise entail the "
            "hypothesis? Answer:"
        ),
    ),
    "mock": Task(
        "mock",
        MOCK_TEMPLATE,
        ("negative", "positive"),
        MOCK_WORDS,
        causal_template=MOCK_CAUSAL_TEMPLATE,
        causal_words=MOCK_CAUSAL_WORDS,
    ),
}
PRESET_NAMES = tuple(sorted(PRESETS))


def get_preset(name: str) -> Task:
    """A preset task by name (case, ``-`` and ``_`` ignored; ``yelp_polarity`` is ``yelp``)."""
    key = name.lower().replace("-", "").replace("_", "")
    aliases = {"yelppolarity": "yelp", "yelpp": "yelp", "sst": "sst2", "ag": "agnews"}
    key = aliases.get(key, key)
    if key not in PRESETS:
        raise TaskError(f"unknown task {name!r}; presets: {', '.join(PRESET_NAMES)}")
    return PRESETS[key]


def verbalizer_ids(task: Task, service: Service) -> list[int]:
    """Token ids of the verbalizer words for the served model, checked to be one token each.

    The task is first resolved for the served kind (:meth:`Task.for_kind`; a clear TaskError
    when it has no template for it). Masked: each word is tokenised as it appears in the input,
    with a leading space when the template puts a space before the mask (byte-level BPE
    tokenisers such as RoBERTa's give ``" great"`` and ``"great"`` different ids), bare
    otherwise. Causal: see :func:`bbt.tuner.verbalizers.causal_verbalizer_ids`.
    """
    info = service.model_info()
    task = task.for_kind(info.kind, info.id)
    causal = task.kind == "causal_lm"
    ids = (causal_verbalizer_ids if causal else masked_verbalizer_ids)(task, service)
    if len(set(ids)) != len(ids):
        raise TaskError(f"verbalizer words of task {task.name!r} map to the same token id: {ids}")
    return ids


__all__ = [
    "MASK_FIELD",
    "METRICS",
    "MOCK_CAUSAL_TEMPLATE",
    "MOCK_CAUSAL_WORDS",
    "MOCK_TEMPLATE",
    "MOCK_WORDS",
    "PRESETS",
    "PRESET_NAMES",
    "Metric",
    "Task",
    "custom_task",
    "get_preset",
    "load_task_file",
    "parse_verbalizer",
    "template_fields",
    "template_kind",
    "verbalizer_ids",
]
