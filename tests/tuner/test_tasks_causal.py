"""Decoder (causal LM) templates: kinds of tasks, rendering, and the one-token verbalizer check
with the leading-space conventions of byte-level BPE (GPT-2 ``Ġ``) and SentencePiece (``▁``)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from bbt.errors import TaskError
from bbt.protocol import ModelInfo, TokenizeResponse
from bbt.server import mock
from bbt.tuner import PRESET_NAMES, Task, custom_task, get_preset, load_task_file, verbalizer_ids
from bbt.tuner.tasks import MOCK_CAUSAL_TEMPLATE, MOCK_CAUSAL_WORDS, template_kind

from .fakes import WordService

# Words each fake vocabulary holds as one token (with their leading-space marker).
_WORDS = ("positive", "negative", "great", "bad", "Sentiment", "Review", "It", "was", "Tech")


class SubwordService(WordService):
    """A causal Service whose tokenizer follows one of the two real conventions.

    ``bpe`` (GPT-2): a word's leading space is part of its token (``Ġpositive``); ``"positive"``
    and ``" positive"`` are different tokens. ``spm`` (Llama): spaces become ``▁`` and one is
    prepended to the text, so ``" positive"`` alone is ``▁`` + ``▁positive`` while after
    ``Sentiment:`` it is the one token ``▁positive``. Words outside the vocabulary fall apart
    into characters.
    """

    def __init__(self, style: str) -> None:
        super().__init__(multi=())
        self.style = style
        self.info = ModelInfo.model_validate(
            {
                **self.info.model_dump(),
                "kind": "causal_lm",
                "mask_token": None,
                "mask_token_id": None,
            }
        )
        mark = "Ġ" if style == "bpe" else "▁"
        self.known = {*_WORDS, *(mark + w for w in _WORDS), ":", "\n", "▁", "Ġ"}

    def _pieces(self, text: str) -> list[str]:
        if self.style == "bpe":
            raw = [p.replace(" ", "Ġ") for p in re.findall(r" ?\w+| ?[^\w\s]|\s", text)]
        else:
            text = "▁" + text.replace(" ", "▁")
            raw = [p for p in re.findall(r"▁*\w+|▁+|[^\w▁]", text)]
            # "▁▁positive": one "▁" token, then "▁positive" (no "▁▁" in the vocabulary).
            raw = [q for p in raw for q in (["▁", p[1:]] if p.startswith("▁▁") else [p])]
        out: list[str] = []
        for p in raw:
            out.extend([p] if p in self.known else list(p))
        return out

    def tokenize(self, texts: Sequence[str], add_special_tokens: bool = False) -> TokenizeResponse:
        toks = [self._pieces(t) for t in texts]
        return TokenizeResponse(
            model="word", ids=[[self._id(x) for x in t] for t in toks], tokens=toks
        )


SST_CAUSAL = Task(
    "s",
    "Review: {text}\nSentiment:",
    ("negative", "positive"),
    (" negative", " positive"),
    kind="causal_lm",
)


def test_every_preset_has_a_decoder_template_ending_where_the_word_comes() -> None:
    for name in PRESET_NAMES:
        task = get_preset(name)
        assert task.kinds == ("masked_lm", "causal_lm"), name
        dec = task.for_kind("causal_lm")
        assert dec.kind == "causal_lm"
        assert "{mask}" not in dec.template
        assert not dec.template.endswith((" ", "{text}"))
        assert all(w.startswith(" ") for w in dec.words), name
        assert dec.fields == task.fields, name  # same data columns for both kinds
        assert task.for_kind("masked_lm") is task
    sst = get_preset("sst2").for_kind("causal_lm")
    assert sst.template == "Review: {sentence}\nSentiment:"
    assert sst.words == (" negative", " positive")


def test_mock_causal_task_matches_the_mock_server() -> None:
    assert MOCK_CAUSAL_TEMPLATE == mock.MOCK_CAUSAL_TEMPLATE
    assert tuple(mock.MOCK_CAUSAL_VERBALIZER) == MOCK_CAUSAL_WORDS


def test_render_for_picks_the_template_of_the_served_kind() -> None:
    bpe = SubwordService("bpe")
    masked = WordService()
    task = get_preset("sst2")
    assert task.render_for(bpe.info, {"sentence": "fine"}) == "Review: fine\nSentiment:"
    assert task.render_for(masked.info, {"sentence": "fine"}) == "fine . It was <mask> ."
    # Long inputs are cut to the server's limit under the decoder template too.
    long = task.render_for(bpe.info, {"sentence": "x" * 500})
    assert len(long) == bpe.info.limits.max_text_chars
    assert long.endswith("\nSentiment:")


def test_a_task_without_a_template_for_the_served_kind_says_so() -> None:
    masked_only = Task("m", "{text} It was {mask} .", ("a", "b"), ("bad", "great"))
    with pytest.raises(TaskError, match=r"no template for a causal LM \(model 'word'.*decoder"):
        verbalizer_ids(masked_only, SubwordService("bpe"))
    with pytest.raises(TaskError, match=r"no template for a masked LM .*\{mask\}"):
        verbalizer_ids(SST_CAUSAL, WordService())
    with pytest.raises(TaskError, match="no mask token"):
        masked_only.render({"text": "x"}, None)


@pytest.mark.parametrize("style", ["bpe", "spm"])
def test_leading_space_words_are_one_token_after_the_template(style: str) -> None:
    svc = SubwordService(style)
    ids = verbalizer_ids(SST_CAUSAL, svc)
    mark = "Ġ" if style == "bpe" else "▁"
    assert ids == [svc.vocab[mark + "negative"], svc.vocab[mark + "positive"]]
    # The id is the one the model sees after the rendered text, not that of the word alone
    # (which for SentencePiece is two tokens: "▁" + "▁positive").
    rendered = svc.tokenize([SST_CAUSAL.render({"text": "ok"}, None) + " positive"]).ids[0]
    assert rendered[-1] == ids[1]
    if style == "spm":
        assert len(svc.tokenize([" positive"]).ids[0]) == 2


def test_a_two_token_word_is_one_clear_error_naming_it_and_its_tokens() -> None:
    task = Task(
        "s", "Review: {text}\nSentiment:", ("a", "b"), (" negative", " meh"), kind="causal_lm"
    )
    with pytest.raises(TaskError) as exc:
        verbalizer_ids(task, SubwordService("bpe"))
    msg = str(exc.value)
    assert "verbalizer word ' meh' (label 'b') is 4 tokens ['Ġ', 'm', 'e', 'h']" in msg
    assert "exactly one; choose a word that is a single token" in msg


def test_a_word_missing_its_leading_space_gets_the_hint_to_add_it() -> None:
    # GPT-2 style: ":" then "positive" without a space is not the vocabulary's "Ġpositive";
    # here the bare word is out of vocabulary, the spaced one is a token.
    svc = SubwordService("bpe")
    svc.known.discard("positive")
    task = Task(
        "s", "Review: {text}\nSentiment:", ("a", "b"), (" negative", "positive"), kind="causal_lm"
    )
    with pytest.raises(TaskError, match=r"' positive' is one token, so write the word with its"):
        verbalizer_ids(task, svc)


def test_a_word_that_merges_with_the_template_end_is_named() -> None:
    class Merging(SubwordService):
        def _pieces(self, text: str) -> list[str]:
            return [text]  # one token per text: every word merges with what precedes it

    svc = Merging("bpe")
    with pytest.raises(TaskError, match=r"' negative' \(label 'negative'\) merges with the end"):
        verbalizer_ids(SST_CAUSAL, svc)


@pytest.mark.parametrize(
    ("template", "kind", "message"),
    [
        ("Review: {text} {mask}", "causal_lm", "no mask token"),
        ("Review: {text}\nSentiment: ", "causal_lm", "ends with a space"),
        ("Review: {text}\nSentiment:", "masked_lm", "a template without {mask} is for a causal"),
        ("Sentiment:", "causal_lm", "no input field"),
        ("{text}:", "decoder", "unknown model kind"),
    ],
)
def test_bad_decoder_templates_are_refused(template: str, kind: str, message: str) -> None:
    with pytest.raises(TaskError, match=re.escape(message)):
        Task("t", template, ("a", "b"), ("x", "y"), kind=kind)  # type: ignore[arg-type]


def test_causal_twin_checks() -> None:
    with pytest.raises(TaskError, match="already for causal LMs"):
        Task("t", "{text}:", ("a", "b"), ("x", "y"), kind="causal_lm", causal_template="{text}:")
    with pytest.raises(TaskError, match="need a causal_template"):
        Task("t", "{text} {mask}", ("a", "b"), ("x", "y"), causal_words=(" x", " y"))
    with pytest.raises(TaskError, match="2 labels but 1 causal_words"):
        Task(
            "t",
            "{text} {mask}",
            ("a", "b"),
            ("x", "y"),
            causal_template="{text}:",
            causal_words=(" x",),
        )
    twin = Task("t", "{text} {mask}", ("a", "b"), ("x", "y"), causal_template="{text}:")
    assert twin.causal_words == (" x", " y")  # default: the words with a leading space


def test_custom_tasks_read_their_kind_off_the_template() -> None:
    dec = custom_task("Review: {text}\nSentiment:", "0= negative,1= positive")
    assert (dec.kind, dec.words) == ("causal_lm", (" negative", " positive"))
    assert dec.label_index("positive") == 1  # data files name the label without the space
    enc = custom_task("{text} It was {mask} .", "0= bad,1= great")
    assert (enc.kind, enc.words) == ("masked_lm", ("bad", "great"))
    assert template_kind("{text} {{mask}}") == "causal_lm"  # an escaped brace is no field


def test_task_files_carry_a_kind_or_both_templates(tmp_path: Path) -> None:
    f = tmp_path / "dec.json"
    f.write_text(
        json.dumps(
            {
                "kind": "causal_lm",
                "template": "Q: {text}\nA:",
                "verbalizer": {"0": " no", "1": " yes"},
            }
        )
    )
    t = load_task_file(f)
    assert (t.kind, t.words, t.kinds) == ("causal_lm", (" no", " yes"), ("causal_lm",))
    both = tmp_path / "both.toml"
    both.write_text(
        'template = "{text} It was {mask} ."\nwords = ["bad", "great"]\n'
        'causal_template = "Review: {text}\\nSentiment:"\n'
        '[causal_verbalizer]\n0 = " negative"\n1 = " positive"\n'
    )
    b = load_task_file(both)
    assert b.kinds == ("masked_lm", "causal_lm")
    assert b.for_kind("causal_lm").words == (" negative", " positive")
    # A run manifest round-trips, and a manifest written before kinds existed still loads.
    assert Task.from_dict(b.as_dict()) == b
    old = {
        k: v for k, v in b.as_dict().items() if k not in ("kind", "causal_template", "causal_words")
    }
    assert Task.from_dict(old).kind == "masked_lm"
    f.write_text(
        json.dumps(
            {
                "kind": "causal_lm",
                "template": "{text} {mask}",
                "words": ["a", "b"],
                "labels": ["x", "y"],
            }
        )
    )
    with pytest.raises(TaskError, match="no mask token"):
        load_task_file(f)
