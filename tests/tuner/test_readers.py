"""Every data format from a fixture made here, pandas and list input, the label map, and the
bad-input cases of issue 25: each a clear TaskError (the CLI's one line: tests/cli)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bbt.errors import TaskError
from bbt.tuner import Example, get_preset, load_examples, sample_k_shot
from bbt.tuner.data import to_examples
from bbt.tuner.readers import parse_label_map

ROWS: list[dict[str, Any]] = [
    {"body": "a gorgeous film", "stars": "pos"},
    {"body": 'dull, "and" long', "stars": "neg"},
    {"body": "fine", "stars": "pos"},
]
WANT = [
    Example({"sentence": "a gorgeous film"}, 1),
    Example({"sentence": 'dull, "and" long'}, 0),
    Example({"sentence": "fine"}, 1),
]
LABELS = "pos=positive,neg=negative"


def write(fmt: str, rows: list[dict[str, Any]], root: Path) -> Path:
    """A fixture file (or directory) of ``rows`` in format ``fmt``."""
    if fmt == "tsv":
        p = root / "d.tsv"
        cols = list(rows[0])
        lines = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
        p.write_text("\n".join(lines) + "\n")
    elif fmt == "csv":
        import pandas as pd

        p = root / "d.csv"
        pd.DataFrame(rows).to_csv(p, index=False)
    elif fmt == "jsonl":
        p = root / "d.jsonl"
        p.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "parquet":
        import pandas as pd

        p = root / "d.parquet"
        pd.DataFrame(rows).to_parquet(p)
    else:
        import datasets

        p = root / "saved"
        datasets.Dataset.from_list(rows).save_to_disk(str(p))
    return p


@pytest.mark.parametrize("fmt", ["tsv", "csv", "jsonl", "parquet", "hf"])
def test_each_format_reads_from_a_fixture(fmt: str, tmp_path: Path) -> None:
    path = write(fmt, ROWS, tmp_path)
    got = load_examples(
        path,
        get_preset("sst2"),
        columns={"sentence": "body"},
        label_column="stars",
        label_map=LABELS,
    )
    assert got == WANT


def test_a_saved_dataset_dict_reads_its_train_split(tmp_path: Path) -> None:
    import datasets

    dd = datasets.DatasetDict(
        {
            "test": datasets.Dataset.from_list([{"text": "x", "label": 0}]),
            "train": datasets.Dataset.from_list([{"text": "y", "label": 1}]),
        }
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    got = load_examples(tmp_path / "dd", get_preset("sst2"))
    assert got == [Example({"sentence": "y"}, 1)]


def test_dataframe_mapping_and_lists_of_rows(tmp_path: Path) -> None:
    import pandas as pd

    task = get_preset("sst2")
    kw: dict[str, Any] = {
        "columns": {"sentence": "body"},
        "label_column": "stars",
        "label_map": {"pos": "positive", "neg": 0},
    }
    assert to_examples(pd.DataFrame(ROWS), task, **kw) == WANT
    assert to_examples(ROWS, task, **kw) == WANT
    cols = {"body": [r["body"] for r in ROWS], "stars": [r["stars"] for r in ROWS]}
    assert to_examples(cols, task, **kw) == WANT


def test_text_pairs_from_a_dataframe() -> None:
    import pandas as pd

    task = get_preset("rte")
    df = pd.DataFrame({"a": ["p1", "p2"], "b": ["h1", "h2"], "label": [0, 1]})
    got = to_examples(df, task, columns={task.fields[0]: "a", task.fields[1]: "b"})
    assert [e.fields for e in got] == [
        {task.fields[0]: "p1", task.fields[1]: "h1"},
        {task.fields[0]: "p2", task.fields[1]: "h2"},
    ]


@pytest.mark.parametrize(
    ("fmt", "rows", "kwargs", "message"),
    [
        ("parquet", ROWS, {"label_column": "stars"}, "no column for field 'sentence'"),
        ("hf", ROWS, {"columns": {"sentence": "nope"}}, "no column(s) nope"),
        ("jsonl", ROWS, {"columns": {"sentence": "body"}}, "no label column 'label'"),
        (
            "csv",
            ROWS,
            {"columns": {"sentence": "body"}, "label_column": "stars"},
            "unknown label 'pos'",
        ),
        (
            "tsv",
            ROWS,
            {"columns": {"sentence": "body"}, "label_column": "stars", "label_map": "pos=1"},
            "label 'neg' is not in the label map",
        ),
    ],
)
def test_bad_columns_and_labels_are_clear_errors(
    fmt: str, rows: list[dict[str, Any]], kwargs: dict[str, Any], message: str, tmp_path: Path
) -> None:
    path = write(fmt, rows, tmp_path)
    with pytest.raises(TaskError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_examples(path, get_preset("sst2"), **kwargs)


def test_unreadable_files_are_clear_errors(tmp_path: Path) -> None:
    task = get_preset("sst2")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet at all")
    with pytest.raises(TaskError, match=r"cannot read .* as Parquet"):
        load_examples(bad, task)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(TaskError, match="as a saved dataset"):
        load_examples(tmp_path / "emptydir", task)
    with pytest.raises(TaskError, match="no such file"):
        load_examples(tmp_path / "missing.parquet", task)
    with pytest.raises(TaskError, match="label map item"):
        parse_label_map("pos")


def test_empty_class_and_k_larger_than_a_class() -> None:
    pool = [Example({"sentence": str(i)}, 0) for i in range(10)]
    with pytest.raises(TaskError, match="class\\(es\\) 1 have no examples"):
        sample_k_shot(pool, k=2, seed=0, num_classes=2)
    pool += [Example({"sentence": "x"}, 1)] * 3
    with pytest.raises(TaskError, match="class 1: 3\\): k is larger than a class"):
        sample_k_shot(pool, k=2, seed=0, num_classes=2)


def test_a_run_directorys_jsonl_reads_back_as_data(tmp_path: Path) -> None:
    """train.jsonl / dev.jsonl of a run ({"fields": ..., "label": index}, as dump_jsonl
    writes them) read back as the same examples, for one- and two-field tasks."""
    from bbt.tuner.data import write_jsonl

    for task, examples in [
        (get_preset("sst2"), WANT),
        (get_preset("rte"), [Example({"sentence1": "a b", "sentence2": "c"}, 1)]),
    ]:
        path = tmp_path / f"{task.name}.jsonl"
        write_jsonl(path, examples)
        assert load_examples(path, task) == examples
        unlabelled = load_examples(path, task, require_labels=False)
        assert [e.fields for e in unlabelled] == [e.fields for e in examples]


def test_a_flat_row_named_fields_is_not_a_run_row() -> None:
    rows: list[dict[str, Any]] = [{"fields": "x y", "label": "positive"}]
    with pytest.raises(TaskError, match="no column for field"):
        to_examples(rows, get_preset("sst2"))
