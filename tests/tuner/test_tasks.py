from __future__ import annotations

import json
from pathlib import Path

import pytest

from bbt.client import LocalClient
from bbt.errors import TaskError
from bbt.server import mock
from bbt.tuner import (
    PRESET_NAMES,
    Task,
    custom_task,
    get_preset,
    load_task_file,
    parse_verbalizer,
    verbalizer_ids,
)

from .fakes import WordService


def test_the_seven_paper_tasks_and_the_mock_are_preset() -> None:
    assert set(PRESET_NAMES) == {"sst2", "yelp", "agnews", "dbpedia", "mrpc", "snli", "rte", "mock"}
    assert get_preset("SST-2").verbalizer == {"negative": "bad", "positive": "great"}
    assert get_preset("agnews").words == ("World", "Sports", "Business", "Tech")
    assert get_preset("dbpedia").num_classes == 14
    assert get_preset("snli").words == ("Yes", "Maybe", "No")
    assert get_preset("mrpc").metric == "f1"
    assert get_preset("rte").fields == ("sentence1", "sentence2")
    assert get_preset("yelp_polarity").name == "yelp"
    with pytest.raises(TaskError, match="presets: agnews"):
        get_preset("imdb")


def test_mock_preset_matches_the_mock_server() -> None:
    task = get_preset("mock")
    assert task.template == mock.MOCK_TEMPLATE
    assert task.words == tuple(mock.MOCK_VERBALIZER)


def test_render_fills_fields_and_mask_and_cuts_long_inputs() -> None:
    task = get_preset("mrpc")
    text = task.render({"sentence1": "A b", "sentence2": "c d"}, "<mask>")
    assert text == "A b ? <mask> , c d"
    long = task.render({"sentence1": "x" * 100, "sentence2": "y" * 100}, "<mask>", max_chars=50)
    assert len(long) <= 50
    assert long.count("<mask>") == 1
    with pytest.raises(TaskError, match="sentence2"):
        task.render({"sentence1": "a"}, "<mask>")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{text} It was .", "exactly once"),
        ("{mask} {mask} {text}", "exactly once"),
        ("It was {mask} .", "no input field"),
        ("{text!r} {mask}", "plain field"),
        ("{text {mask}", "malformed"),
    ],
)
def test_bad_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(TaskError, match=message):
        Task("t", template, ("a", "b"), ("x", "y"))


def test_label_normalisation() -> None:
    task = get_preset("agnews")
    assert task.label_index("Sci/Tech") == 3
    assert task.label_index("sports") == 1
    assert task.label_index("Tech") == 3
    assert task.label_index(2) == 2
    assert task.label_index("0") == 0
    assert get_preset("rte").label_index("not_entailment") == 1
    with pytest.raises(TaskError, match="unknown label 'Weather'"):
        task.label_index("Weather")
    with pytest.raises(TaskError, match="out of range"):
        task.label_index(4)


def test_verbalizer_specs_and_custom_tasks() -> None:
    assert parse_verbalizer("1=great,0=bad") == (("0", "1"), ("bad", "great"))
    assert parse_verbalizer("neg=bad,pos=good") == (("neg", "pos"), ("bad", "good"))
    with pytest.raises(TaskError, match=r"0\.\.1"):
        parse_verbalizer("0=bad,2=good")
    with pytest.raises(TaskError, match="LABEL=WORD"):
        parse_verbalizer("bad,good")
    task = custom_task("Review: {review} Verdict: {mask}", "0=bad,1=great")
    assert task.fields == ("review",)
    assert task.label_index("great") == 1


def test_task_files_json_and_toml(tmp_path: Path) -> None:
    j = tmp_path / "t.json"
    j.write_text(json.dumps({"template": "{q} ? {mask}", "verbalizer": {"0": "no", "1": "yes"}}))
    t = load_task_file(j)
    assert (t.name, t.fields, t.words) == ("t", ("q",), ("no", "yes"))
    toml = tmp_path / "s.toml"
    toml.write_text(
        'name = "spam"\ntemplate = "{text} Spam? {mask}"\nlabels = ["ham", "spam"]\n'
        'words = ["No", "Yes"]\nmetric = "f1"\n'
    )
    s = load_task_file(toml)
    assert (s.name, s.metric, s.labels) == ("spam", "f1", ("ham", "spam"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(TaskError, match="not valid JSON"):
        load_task_file(bad)
    j.write_text(json.dumps({"labels": ["a", "b"], "words": ["x", "y"]}))
    with pytest.raises(TaskError, match="lacks 'template'"):
        load_task_file(j)


def test_verbalizer_ids_are_single_tokens_of_the_service(service: LocalClient) -> None:
    ids = verbalizer_ids(get_preset("mock"), service)
    toks = service.tokenize(["bad", "great"]).ids
    assert ids == [toks[0][0], toks[1][0]]


def test_multi_token_words_are_refused_with_a_clear_message() -> None:
    svc = WordService(multi=("Sci/Tech", "Tech"))
    with pytest.raises(TaskError, match=r"'Tech' \(label 'Sci/Tech'\) is 2 tokens"):
        verbalizer_ids(get_preset("agnews"), svc)
    ok = WordService(multi=())
    assert len(verbalizer_ids(get_preset("agnews"), ok)) == 4
