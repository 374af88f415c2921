from __future__ import annotations

import json
from pathlib import Path

import pytest

from bbt.errors import TaskError
from bbt.tuner import Example, get_preset, load_examples, parse_columns, sample_k_shot

SHARED = Path(__file__).resolve().parents[2] / "examples" / "data"


def test_tsv_csv_jsonl_with_column_mapping(tmp_path: Path) -> None:
    task = get_preset("sst2")
    (tmp_path / "a.tsv").write_text('sentence\tlabel\nit is "fine"\t1\nawful\t0\n')
    (tmp_path / "a.csv").write_text('review,y\n"good, really",positive\nbad,negative\n')
    (tmp_path / "a.jsonl").write_text(
        json.dumps({"s": "nice", "label": 1}) + "\n\n" + json.dumps({"s": "meh", "label": 0})
    )
    tsv = load_examples(tmp_path / "a.tsv", task)
    assert tsv[0] == Example({"sentence": 'it is "fine"'}, 1)
    csv_ = load_examples(tmp_path / "a.csv", task, columns={"sentence": "review"}, label_column="y")
    assert [e.label for e in csv_] == [1, 0]
    assert csv_[0].fields["sentence"] == "good, really"
    js = load_examples(tmp_path / "a.jsonl", task, columns=parse_columns(["sentence=s"]))
    assert [e.fields["sentence"] for e in js] == ["nice", "meh"]


def test_clear_errors_for_bad_data(tmp_path: Path) -> None:
    task = get_preset("sst2")
    f = tmp_path / "x.tsv"
    f.write_text("text\tlabel\nok\t3\n")
    with pytest.raises(TaskError, match="row 1: label 3 is out of range"):
        load_examples(f, task)
    f.write_text("text\tgold\nok\t1\n")
    with pytest.raises(TaskError, match="no label column 'label'"):
        load_examples(f, task)
    f.write_text("a\tlabel\nok\t1\n")
    with pytest.raises(TaskError, match="no column for field 'sentence'"):
        load_examples(f, task)
    with pytest.raises(TaskError, match="no column"):
        load_examples(f, task, columns={"sentence": "nope"})
    with pytest.raises(TaskError, match="cannot read"):
        load_examples(tmp_path / "missing.tsv", task)
    with pytest.raises(TaskError, match="format"):
        load_examples(tmp_path / "data.xlsx", task)
    (tmp_path / "b.jsonl").write_text("[1]\n")
    with pytest.raises(TaskError, match="JSON object"):
        load_examples(tmp_path / "b.jsonl", task)


def test_k_shot_is_per_class_seeded_and_disjoint_from_dev() -> None:
    exs = [Example({"text": f"t{i}"}, i % 3) for i in range(60)]
    train, dev = sample_k_shot(exs, 4, seed=5, num_classes=3)
    assert len(train) == 12
    assert len(dev) == 12
    for c in range(3):
        assert sum(e.label == c for e in train) == 4
        assert sum(e.label == c for e in dev) == 4
    assert not {e.fields["text"] for e in train} & {e.fields["text"] for e in dev}
    again = sample_k_shot(exs, 4, seed=5, num_classes=3)
    assert again == (train, dev)
    assert sample_k_shot(exs, 4, seed=6, num_classes=3) != (train, dev)


def test_k_shot_reports_short_classes() -> None:
    exs = [Example({"text": "a"}, 0)] * 10 + [Example({"text": "b"}, 1)] * 3
    with pytest.raises(TaskError, match="class 1: 3"):
        sample_k_shot(exs, 2, seed=0, num_classes=2)


@pytest.mark.parametrize(("name", "task"), [("sst2.tsv", "sst2"), ("agnews.tsv", "agnews")])
def test_shipped_samples_load_and_support_16_shot(name: str, task: str) -> None:
    t = get_preset(task)
    exs = load_examples(SHARED / name, t)
    assert len(exs) <= 400
    train, dev = sample_k_shot(exs, 16, seed=42, num_classes=t.num_classes)
    assert len(train) == len(dev) == 16 * t.num_classes
