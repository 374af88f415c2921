"""Data beyond delimited text: Parquet files, ``datasets.save_to_disk`` directories, pandas
DataFrames and plain lists, and the label map.

:func:`bbt.tuner.data.read_rows` hands Parquet files and directories to
:func:`read_table`; Parquet needs ``pyarrow`` (``bbt[data]``), a saved dataset needs
``datasets`` (``bbt[data]``). Both are imported only when such data is read.

A label map (``--label-map pos=1,neg=0``) turns the values a data set holds into the task's
labels (an index, a label name or a verbalizer word) before the task reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from bbt.errors import TaskError

#: Formats read here (the delimited ones are bbt.tuner.data's own).
TABLE_FORMATS = ("parquet", "hf")


def table_format(path: Path, fmt: str | None) -> str | None:
    """``"parquet"`` or ``"hf"`` when ``path`` (or ``fmt``) names one, else ``None``."""
    if fmt is not None:
        return fmt if fmt in TABLE_FORMATS else None
    if path.is_dir():
        return "hf"
    if path.suffix.lower() in (".parquet", ".pq"):
        return "parquet"
    return None


def read_table(path: Path, fmt: str) -> list[dict[str, Any]]:
    """The rows of a Parquet file (``fmt="parquet"``) or a saved dataset (``fmt="hf"``)."""
    if fmt == "parquet":
        return _read_parquet(path)
    return _read_saved_dataset(path)


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise TaskError("reading Parquet needs pyarrow: pip install 'bbt[data]'") from None
    if not path.is_file():
        raise TaskError(f"cannot read data file {path}: no such file")
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:  # ArrowInvalid is a ValueError
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TaskError(f"cannot read {path} as Parquet: {first}") from None
    rows: list[dict[str, Any]] = table.to_pylist()
    return rows


def _read_saved_dataset(path: Path) -> list[dict[str, Any]]:
    if not path.is_dir():
        raise TaskError(f"cannot read data directory {path}: not a directory")
    try:
        import datasets
    except ImportError:
        raise TaskError(
            "reading a saved dataset directory needs datasets: pip install 'bbt[data]'"
        ) from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (OSError, ValueError, FileNotFoundError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TaskError(f"cannot read {path} as a saved dataset: {first}") from None
    if isinstance(ds, datasets.DatasetDict):
        split = "train" if "train" in ds else next(iter(ds), None)
        if split is None:
            raise TaskError(f"saved dataset {path} holds no split")
        ds = ds[split]
    return [dict(row) for row in ds]


def rows_of(data: Any) -> list[dict[str, Any]]:
    """Rows from a pandas DataFrame, a sequence of mappings, or a mapping of columns."""
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # a DataFrame, without pandas
        records: list[dict[str, Any]] = data.to_dict(orient="records")
        return [{str(k): v for k, v in r.items()} for r in records]
    if isinstance(data, Mapping):
        cols = {str(k): list(v) for k, v in data.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise TaskError("the columns given have different lengths")
        n = lengths.pop() if lengths else 0
        return [{k: v[i] for k, v in cols.items()} for i in range(n)]
    if isinstance(data, Sequence) and not isinstance(data, str):
        out = []
        for i, row in enumerate(data):
            if not isinstance(row, Mapping):
                raise TaskError(f"row {i} is a {type(row).__name__}, not a mapping of columns")
            out.append({str(k): v for k, v in row.items()})
        return out
    raise TaskError(
        f"cannot read examples from a {type(data).__name__}: pass a DataFrame, a list of "
        "row mappings or a mapping of columns"
    )


def parse_label_map(spec: str | Mapping[Any, Any] | None) -> dict[str, str]:
    """``pos=1,neg=0`` (or a mapping) -> {value in the data: task label}."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    out: dict[str, str] = {}
    for item in spec.split(","):
        raw, sep, label = item.partition("=")
        if not sep or not raw.strip() or not label.strip():
            raise TaskError(f"cannot read label map item {item!r}; write VALUE=LABEL,VALUE=LABEL")
        out[raw.strip()] = label.strip()
    return out


def map_label(value: Any, label_map: Mapping[str, str]) -> Any:
    """``value`` through ``label_map``; a value the map does not name is an error (a map
    is meant to cover the data)."""
    if not label_map:
        return value
    key = str(value).strip()
    if key not in label_map:
        raise TaskError(
            f"label {key!r} is not in the label map (it maps {', '.join(sorted(label_map))})"
        )
    return label_map[key]


#: The keys of a row of a run directory's ``train.jsonl`` / ``dev.jsonl``
#: (:func:`bbt.tuner.data.dump_jsonl`): the example's fields, and its label as a class index.
RUN_ROW_KEYS = frozenset({"fields", "label"})


def unwrap_run_rows(
    rows: list[dict[str, Any]], fields: Sequence[str], label_key: str
) -> list[dict[str, Any]]:
    """Rows of a run directory's ``train.jsonl`` / ``dev.jsonl`` as flat rows (each field a
    column, the label index under ``label_key``), so such a file reads back as data
    (``bbt eval RUN --data RUN/dev.jsonl``); any other rows unchanged. A task with a field
    named ``fields`` reads its rows as they are."""
    if not rows or "fields" in fields:
        return rows
    if not all(set(r) == RUN_ROW_KEYS and isinstance(r["fields"], dict) for r in rows):
        return rows
    return [{**r["fields"], label_key: r["label"]} for r in rows]
