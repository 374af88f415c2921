"""Tasks: a template with input fields and one mask, and a verbalizer (label -> word).

The presets are the seven tasks of Sun et al. (ICML 2022, Table 1 and their released code):
templates and label words as in the paper, written with ``{mask}`` where the model's mask
token goes and ``{field}`` for each input column. Evaluation metrics follow the paper:
F1 for MRPC, accuracy for the others.
"""

from __future__ import annotations

import json
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from bbt.client import Service
from bbt.errors import TaskError

Metric = Literal["accuracy", "f1"]
METRICS: tuple[Metric, ...] = ("accuracy", "f1")
MASK_FIELD = "mask"


def template_fields(template: str) -> tuple[str, ...]:
    """Input fields of ``template`` in order of appearance (``{mask}`` excluded)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise TaskError(f"template {template!r} is malformed: {exc}") from None
    names: list[str] = []
    masks = 0
    for _, name, spec, conv in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conv:
            raise TaskError(
                f"template {template!r}: placeholder {{{name}}} must be a plain field name "
                "(write literal braces as {{ and }})"
            )
        if name == MASK_FIELD:
            masks += 1
        elif name not in names:
            names.append(name)
    if masks != 1:
        raise TaskError(f"template {template!r} must contain {{mask}} exactly once (found {masks})")
    if not names:
        raise TaskError(f"template {template!r} has no input field such as {{text}}")
    return tuple(names)


@dataclass(frozen=True)
class Task:
    """A prompt-based classification task.

    ``labels`` are the class names in index order; ``words[i]`` is the verbalizer word of
    class i. ``aliases`` maps other spellings found in data files (e.g. ``entailment``) to
    a class index.
    """

    name: str
    template: str
    labels: tuple[str, ...]
    words: tuple[str, ...]
    metric: Metric = "accuracy"
    aliases: Mapping[str, int] = field(default_factory=dict)
    label_column: str = "label"

    def __post_init__(self) -> None:
        template_fields(self.template)
        if len(self.labels) < 2:
            raise TaskError(f"task {self.name!r} needs at least two labels")
        if len(self.words) != len(self.labels):
            raise TaskError(
                f"task {self.name!r}: {len(self.labels)} labels but {len(self.words)} words"
            )
        if len(set(self.words)) != len(self.words):
            raise TaskError(f"task {self.name!r}: verbalizer words must be distinct")
        if len({lab.casefold() for lab in self.labels}) != len(self.labels):
            raise TaskError(f"task {self.name!r}: label names must be distinct")
        if self.metric not in METRICS:
            raise TaskError(f"unknown metric {self.metric!r}; choose accuracy or f1")

    @property
    def fields(self) -> tuple[str, ...]:
        return template_fields(self.template)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    @property
    def verbalizer(self) -> dict[str, str]:
        return dict(zip(self.labels, self.words, strict=True))

    def render(
        self, values: Mapping[str, str], mask_token: str, max_chars: int | None = None
    ) -> str:
        """The model input for one example. Field values longer than the server allows are cut
        (each field gets an equal share of the room the template leaves)."""
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
            for i, (lab, word) in enumerate(zip(self.labels, self.words, strict=True)):
                if key in (lab.casefold(), word.casefold()):
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
        return {
            "name": self.name,
            "template": self.template,
            "labels": list(self.labels),
            "words": list(self.words),
            "metric": self.metric,
            "aliases": dict(self.aliases),
            "label_column": self.label_column,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Task:
        try:
            return cls(
                name=str(data.get("name", "custom")),
                template=str(data["template"]),
                labels=tuple(str(x) for x in data["labels"]),
                words=tuple(str(x) for x in data["words"]),
                metric=data.get("metric", "accuracy"),
                aliases={str(k): int(v) for k, v in dict(data.get("aliases", {})).items()},
                label_column=str(data.get("label_column", "label")),
            )
        except KeyError as exc:
            raise TaskError(f"task definition lacks {exc.args[0]!r}") from None
        except (TypeError, ValueError) as exc:
            raise TaskError(f"task definition is malformed: {exc}") from None


def parse_verbalizer(spec: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``0=bad,1=great`` or ``negative=bad,positive=great`` -> (labels, words). Labels that are
    all integers must be 0..C-1 and are sorted; names keep the order given."""
    pairs: list[tuple[str, str]] = []
    for item in spec.split(","):
        label, sep, word = item.partition("=")
        if not sep or not label.strip() or not word.strip():
            raise TaskError(f"cannot read verbalizer item {item!r}; write LABEL=WORD,LABEL=WORD")
        pairs.append((label.strip(), word.strip()))
    if all(lab.isdigit() for lab, _ in pairs):
        pairs.sort(key=lambda p: int(p[0]))
        if [int(lab) for lab, _ in pairs] != list(range(len(pairs))):
            raise TaskError(f"integer labels in {spec!r} must be 0..{len(pairs) - 1}")
    return tuple(lab for lab, _ in pairs), tuple(w for _, w in pairs)


def custom_task(
    template: str, verbalizer: str, name: str = "custom", metric: Metric = "accuracy"
) -> Task:
    """A task from CLI flags (``--template``, ``--verbalizer``)."""
    labels, words = parse_verbalizer(verbalizer)
    return Task(name=name, template=template, labels=labels, words=words, metric=metric)


def _parse_toml(raw: bytes) -> dict[str, Any]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        raise TaskError("TOML task files need Python 3.11 or later; use JSON") from None
    return tomllib.loads(raw.decode())


def load_task_file(path: str | Path) -> Task:
    """A task from a JSON or TOML file with keys ``template``, ``labels``/``words`` or
    ``verbalizer`` (a label -> word table), and optionally ``name``, ``metric``, ``aliases``,
    ``label_column``."""
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
    if "verbalizer" in data:
        verb = data.pop("verbalizer")
        if not isinstance(verb, dict):
            raise TaskError(f"task file {p}: verbalizer must be a table LABEL = WORD")
        labels, words = parse_verbalizer(",".join(f"{k}={v}" for k, v in verb.items()))
        data.setdefault("labels", list(labels))
        data.setdefault("words", list(words))
    data.setdefault("name", p.stem)
    return Task.from_dict(data)


# --------------------------------------------------------------------------- presets

#: Template and verbalizer of the mock server's built-in sentiment task. Kept in step with
#: ``bbt.server.mock`` (a test checks they agree).
MOCK_TEMPLATE = "{text} It was {mask} ."
MOCK_WORDS = ("bad", "great")

PRESETS: dict[str, Task] = {
    "sst2": Task(
        "sst2",
        "{sentence} . It was {mask} .",
        ("negative", "positive"),
        ("bad", "great"),
    ),
    "yelp": Task(
        "yelp",
        "{text} . It was {mask} .",
        ("negative", "positive"),
        ("bad", "great"),
    ),
    "agnews": Task(
        "agnews",
        "{mask} News: {text}",
        ("World", "Sports", "Business", "Sci/Tech"),
        ("World", "Sports", "Business", "Tech"),
        aliases={"sci_tech": 3, "science": 3, "technology": 3},
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
    ),
    "mrpc": Task(
        "mrpc",
        "{sentence1} ? {mask} , {sentence2}",
        ("not_equivalent", "equivalent"),
        ("No", "Yes"),
        metric="f1",
    ),
    "snli": Task(
        "snli",
        "{premise} ? {mask} , {hypothesis}",
        ("entailment", "neutral", "contradiction"),
        ("Yes", "Maybe", "No"),
    ),
    "rte": Task(
        "rte",
        "{sentence1} ? {mask} , {sentence2}",
        ("entailment", "not_entailment"),
        ("Yes", "No"),
    ),
    "mock": Task(
        "mock",
        MOCK_TEMPLATE,
        ("negative", "positive"),
        MOCK_WORDS,
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


# --------------------------------------------------------------------------- verbalizer ids


def _space_before_mask(template: str) -> bool:
    before = template.split("{" + MASK_FIELD + "}", 1)[0]
    return bool(before) and before[-1].isspace()


def verbalizer_ids(task: Task, service: Service) -> list[int]:
    """Token ids of the verbalizer words, checked to be one token each.

    Each word is tokenised as it appears in the input: with a leading space when the template
    puts a space before the mask (byte-level BPE tokenisers such as RoBERTa's give ``" great"``
    and ``"great"`` different ids), bare otherwise.
    """
    spaced = _space_before_mask(task.template)
    forms = [(" " + w) if spaced else w for w in task.words]
    resp = service.tokenize(forms + list(task.words) + [" " + w for w in task.words])
    k = len(task.words)
    ids: list[int] = []
    for i, word in enumerate(task.words):
        got = resp.ids[i]
        if len(got) == 1:
            ids.append(got[0])
            continue
        bare, with_space = resp.ids[k + i], resp.ids[2 * k + i]
        other = with_space if not spaced else bare
        hint = (
            f"; it is one token {'with' if not spaced else 'without'} a leading space, so "
            f"{'add' if not spaced else 'remove'} the space before {{mask}} in the template"
            if len(other) == 1
            else "; choose a word that is a single token"
        )
        pieces = resp.tokens[i]
        where = "after a space" if spaced else "with no leading space"
        raise TaskError(
            f"verbalizer word {word!r} (label {task.labels[i]!r}) is {len(got)} tokens {pieces} "
            f"for model {service.model_info().id!r} {where}, but must be exactly one{hint}"
        )
    if len(set(ids)) != len(ids):
        raise TaskError(f"verbalizer words of task {task.name!r} map to the same token id: {ids}")
    return ids
