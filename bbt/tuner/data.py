"""Data: reading examples from TSV, CSV and JSONL, and the paper's k-shot sampling.

Sun et al. (2022, Sec. 4.1) follow the few-shot protocol of Gao et al. (2021): for each
seed, sample k examples per class for training and another, disjoint k per class as the
dev set used for model selection (k = 16 in the paper).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bbt.errors import TaskError
from bbt.tuner.readers import (
    map_label,
    parse_label_map,
    read_table,
    rows_of,
    table_format,
    unwrap_run_rows,
)
from bbt.tuner.tasks import Task

FORMATS = ("tsv", "csv", "jsonl", "parquet", "hf")


@dataclass(frozen=True)
class Example:
    """One labelled (or unlabelled, ``label=None``) input: values for the template's fields."""

    fields: Mapping[str, str]
    label: int | None = None

    def as_dict(self, task: Task) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.fields)
        if self.label is not None:
            out[task.label_column] = task.labels[self.label]
        return out


def _format_of(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FORMATS:
            raise TaskError(f"unknown data format {fmt!r}; choose one of {', '.join(FORMATS)}")
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("tsv", "csv"):
        return suffix
    if suffix in ("jsonl", "json", "ndjson"):
        return "jsonl"
    raise TaskError(
        f"cannot tell the format of {path} from its extension; pass the format "
        f"({', '.join(FORMATS)})"
    )


def read_rows(path: str | Path, fmt: str | None = None) -> list[dict[str, Any]]:
    """Rows of a TSV/CSV file with a header row, of a JSONL file (one object a line), of a
    Parquet file or of a ``datasets.save_to_disk`` directory (``hf``)."""
    p = Path(path)
    table = table_format(p, fmt)
    if table is not None:
        return read_table(p, table)
    kind = _format_of(p, fmt)
    try:
        with p.open(encoding="utf-8", newline="") as fh:
            if kind == "jsonl":
                rows: list[dict[str, Any]] = []
                for lineno, line in enumerate(fh, 1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as exc:
                        raise TaskError(f"{p}:{lineno}: not valid JSON ({exc.msg})") from None
                    if not isinstance(obj, dict):
                        raise TaskError(f"{p}:{lineno}: each line must be a JSON object")
                    rows.append(obj)
                return rows
            # TSV data (GLUE) carries quotes as literal characters: no quoting for TSV.
            reader = csv.DictReader(
                fh,
                delimiter="\t" if kind == "tsv" else ",",
                quoting=csv.QUOTE_NONE if kind == "tsv" else csv.QUOTE_MINIMAL,
            )
            out = []
            for lineno, row in enumerate(reader, 2):
                if None in row or any(v is None for v in row.values()):
                    raise TaskError(f"{p}:{lineno}: row has a different number of columns")
                out.append(dict(row))
            return out
    except OSError as exc:
        raise TaskError(f"cannot read data file {p}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise TaskError(f"data file {p} is not UTF-8 text") from None
    except csv.Error as exc:
        raise TaskError(f"{p}: malformed {kind.upper()}: {exc}") from None


def parse_columns(specs: Sequence[str]) -> dict[str, str]:
    """``FIELD=COLUMN`` items (``--column text=sentence``) -> {field: column}."""
    out: dict[str, str] = {}
    for spec in specs:
        fld, sep, col = spec.partition("=")
        if not sep or not fld.strip() or not col.strip():
            raise TaskError(f"cannot read column mapping {spec!r}; write FIELD=COLUMN")
        out[fld.strip()] = col.strip()
    return out


def load_examples(
    path: str | Path,
    task: Task,
    *,
    columns: Mapping[str, str] | None = None,
    label_column: str | None = None,
    fmt: str | None = None,
    require_labels: bool = True,
    label_map: str | Mapping[Any, Any] | None = None,
) -> list[Example]:
    """Examples of ``task`` from a file. ``columns`` maps template fields to file columns
    (default: same name; a single-field task also finds ``text`` or ``sentence``);
    ``label_map`` turns the file's label values into the task's (``pos=1,neg=0``)."""
    p = Path(path)
    rows = read_rows(p, fmt)
    if not rows:
        raise TaskError(f"data file {p} holds no rows")
    return _examples(
        rows, str(p), task, columns, label_column, require_labels, parse_label_map(label_map)
    )


def to_examples(
    data: Any,
    task: Task,
    *,
    columns: Mapping[str, str] | None = None,
    label_column: str | None = None,
    require_labels: bool = True,
    label_map: str | Mapping[Any, Any] | None = None,
) -> list[Example]:
    """:func:`load_examples` on data in memory: a pandas DataFrame, a list of row mappings
    or a mapping of columns (lists)."""
    rows = rows_of(data)
    if not rows:
        raise TaskError("the data holds no rows")
    return _examples(
        rows, "data", task, columns, label_column, require_labels, parse_label_map(label_map)
    )


def _examples(
    rows: list[dict[str, Any]],
    where: str,
    task: Task,
    columns: Mapping[str, str] | None,
    label_column: str | None,
    require_labels: bool,
    label_map: Mapping[str, str],
) -> list[Example]:
    lab_col = label_column or task.label_column
    rows = unwrap_run_rows(rows, task.fields, lab_col)  # a run directory's own JSONL
    available = list(rows[0].keys())
    mapping = _field_columns(where, task, available, columns)
    has_labels = lab_col in available
    if require_labels and not has_labels:
        raise TaskError(
            f"{where} has no label column {lab_col!r} (columns: {', '.join(available)}); "
            "name it with --label-column"
        )
    out: list[Example] = []
    for i, row in enumerate(rows):
        values = {}
        for f, c in mapping.items():
            v = row.get(c)
            if v is None:
                raise TaskError(f"{where}: row {i + 1} lacks column {c!r}")
            values[f] = str(v)
        label = None
        if has_labels:
            try:
                label = task.label_index(map_label(row[lab_col], label_map))
            except TaskError as exc:
                raise TaskError(f"{where}: row {i + 1}: {exc}") from None
        out.append(Example(values, label))
    return out


def _field_columns(
    p: str, task: Task, available: list[str], columns: Mapping[str, str] | None
) -> dict[str, str]:
    """Which file column feeds each template field: ``columns`` first, then the field's own
    name, then (for a one-field task) a usual name for a text column."""
    mapping = dict(columns or {})
    unknown = [f for f in mapping if f not in task.fields]
    if unknown:
        raise TaskError(
            f"column mapping names field(s) {', '.join(unknown)} that task {task.name!r} does "
            f"not have (its fields: {', '.join(task.fields)})"
        )
    for f in task.fields:
        if f in mapping:
            continue
        if f in available:
            mapping[f] = f
        elif len(task.fields) == 1:
            guess = next((g for g in _TEXT_COLUMNS if g in available), None)
            if guess is not None:
                mapping[f] = guess
        if f not in mapping:
            raise TaskError(
                f"{p} has no column for field {f!r} (columns: {', '.join(available)}); "
                f"map one with --column {f}=COLUMN"
            )
    missing = [c for c in mapping.values() if c not in available]
    if missing:
        raise TaskError(
            f"{p} has no column(s) {', '.join(missing)} (columns: {', '.join(available)})"
        )
    return mapping


#: Columns a one-field task reads its text from when none is mapped, in this order.
_TEXT_COLUMNS = ("text", "sentence", "content", "review")


def sample_k_shot(
    examples: Sequence[Example],
    k: int,
    seed: int,
    num_classes: int,
    *,
    dev_k: int | None = None,
) -> tuple[list[Example], list[Example]]:
    """k examples per class for training and a disjoint ``dev_k`` (default k) per class for the
    dev set, drawn with ``seed`` (one permutation per class, so train and dev never overlap).

    Both lists are ordered class by class, then by the permutation; the order does not change
    any loss (losses average over the batch).
    """
    dev_k = k if dev_k is None else dev_k
    if k < 1 or dev_k < 0:
        raise TaskError(f"k must be at least 1 and dev k non-negative (got k={k}, dev k={dev_k})")
    by_class: list[list[int]] = [[] for _ in range(num_classes)]
    for i, ex in enumerate(examples):
        if ex.label is None:
            raise TaskError(f"example {i} has no label; k-shot sampling needs labelled data")
        by_class[ex.label].append(i)
    empty = [c for c, ids in enumerate(by_class) if not ids]
    if empty:
        raise TaskError(
            f"class(es) {', '.join(map(str, empty))} have no examples; each class needs "
            f"{k} train + {dev_k} dev"
        )
    short = [(c, len(ids)) for c, ids in enumerate(by_class) if len(ids) < k + dev_k]
    if short:
        detail = ", ".join(f"class {c}: {n}" for c, n in short)
        raise TaskError(
            f"too few examples per class for {k} train + {dev_k} dev each ({detail}): k is "
            "larger than a class; lower k or add data"
        )
    rng = np.random.Generator(np.random.PCG64(seed))
    train: list[Example] = []
    dev: list[Example] = []
    for ids in by_class:
        order = rng.permutation(len(ids))
        train.extend(examples[ids[j]] for j in order[:k])
        dev.extend(examples[ids[j]] for j in order[k : k + dev_k])
    return train, dev


def dump_jsonl(examples: Sequence[Example]) -> str:
    """The JSONL text :func:`write_jsonl` writes (a run directory writes it atomically)."""
    return "".join(
        json.dumps({"fields": dict(ex.fields), "label": ex.label}) + "\n" for ex in examples
    )


def parse_jsonl(text: str) -> list[Example]:
    """The examples in JSONL ``text`` as :func:`dump_jsonl` makes it."""
    out = []
    for line in text.split("\n"):  # not splitlines(): U+2028 may sit inside a string
        if line.strip():
            obj = json.loads(line)
            out.append(Example(obj["fields"], obj["label"]))
    return out


def write_jsonl(path: Path, examples: Sequence[Example]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        fh.write(dump_jsonl(examples))


def read_jsonl(path: Path) -> list[Example]:
    with path.open(encoding="utf-8") as fh:
        return parse_jsonl(fh.read())
