"""``bbt tune`` / ``eval`` / ``predict`` on Parquet and saved datasets with ``--text-column``,
``--label-column`` and ``--label-map``; each bad input one clear line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.cli import app
from bbt.server.mock import sample_mock_dataset
from bbt.tuner import read_manifest

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]
NAMES = {0: "neg", 1: "pos"}
MAP = "neg=negative,pos=positive"


def frame(n: int = 80, only: int | None = None) -> object:
    import pandas as pd

    rows = [
        {"body": t, "stars": NAMES[y]}
        for t, y in sample_mock_dataset(n, 3)
        if only is None or y == only
    ]
    return pd.DataFrame(rows)


def test_tune_eval_predict_from_parquet_and_a_saved_dataset(tmp_path: Path) -> None:
    import datasets

    df = frame()
    pq = tmp_path / "train.parquet"
    df.to_parquet(pq)  # type: ignore[attr-defined]
    saved = tmp_path / "saved"
    datasets.Dataset.from_pandas(df).save_to_disk(str(saved))
    cols = ["--text-column", "body", "--label-column", "stars", "--label-map", MAP]
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        [
            "tune",
            "--task",
            "mock",
            "-k",
            "4",
            "--budget",
            "16",
            "--data",
            str(pq),
            *cols,
            "--out",
            str(run),
            *SMALL,
        ],
    )
    assert r.exit_code == 0, r.output
    options = read_manifest(run)["options"]
    assert options["text_field"] == "body"
    assert options["label_map"] == MAP
    r = runner.invoke(app, ["eval", str(run), "--data", str(saved), *cols])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["n"] == 80
    r = runner.invoke(app, ["predict", str(run), "--file", str(pq), "--text-column", "body"])
    assert r.exit_code == 0, r.output
    assert len(r.stdout.strip().splitlines()) == 80


@pytest.mark.parametrize(
    ("setup", "extra", "message"),
    [
        ("full", ["--text-column", "nope"], "has no column(s) nope"),
        ("full", ["--text-column", "body"], "no label column 'label'"),
        ("full", ["--text-column", "body", "--label-column", "stars"], "unknown label 'neg'"),
        ("full", ["--text-column", "body", "--label-column", "stars", "--label-map", "neg=0"],
         "label 'pos' is not in the label map"),
        ("one", ["--text-column", "body", "--label-column", "stars", "--label-map", MAP],
         "have no examples"),
        ("full", ["-k", "40", "--text-column", "body", "--label-column", "stars",
                  "--label-map", MAP], "k is larger than a class"),
        ("junk", [], "as Parquet"),
        ("full", ["--format", "xlsx"], "unknown data format 'xlsx'"),
    ],
)  # fmt: skip
def test_bad_data_is_one_clear_line_and_exit_2(
    tmp_path: Path, setup: str, extra: list[str], message: str
) -> None:
    path = tmp_path / "d.parquet"
    if setup == "junk":
        path.write_bytes(b"PAR1 but not really")
    else:
        frame(only=1 if setup == "one" else None).to_parquet(path)  # type: ignore[attr-defined]
    r = runner.invoke(
        app,
        [
            "tune",
            "--task",
            "mock",
            "-k",
            "4",
            "--data",
            str(path),
            *extra,
            "--out",
            str(tmp_path / "x"),
            *SMALL,
        ],
    )
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output
    assert "Traceback" not in r.output


def test_text_pairs_with_text_column_and_text_pair_column(tmp_path: Path) -> None:
    import pandas as pd

    rows = [{"x": t, "z": t.split()[0], "label": y} for t, y in sample_mock_dataset(60, 4)]
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(rows).to_parquet(path)
    task = ["--template", "{a} ? {mask} , {b}", "--verbalizer", "0=bad,1=great"]
    cols = ["--text-column", "x", "--text-pair-column", "z"]
    run = tmp_path / "run"
    r = runner.invoke(
        app,
        ["tune", *task, "-k", "4", "--budget", "16", "--data", str(path), *cols,
         "--out", str(run), *SMALL],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    train = (run / "train.jsonl").read_text().splitlines()
    first = json.loads(train[0])["fields"]
    assert set(first) == {"a", "b"}
    assert first["b"] == first["a"].split()[0]
    r = runner.invoke(app, ["eval", str(run), "--data", str(path), *cols])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["n"] == 60
    r = runner.invoke(
        app,
        ["tune", "--task", "mock", "--data", str(path), "--text-pair-column", "z",
         "--out", str(tmp_path / "y"), *SMALL],
    )  # fmt: skip
    assert r.exit_code == 2
    assert "--text-pair-column needs a two-field task" in r.output
