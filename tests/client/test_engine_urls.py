"""``ENGINE+http://`` URLs: one parser for every engine adapter."""

from __future__ import annotations

import pytest

from bbt.client.engine_urls import engine_of, split_engine_url
from bbt.errors import ConfigurationError
from bbt.sglang import parse_sglang_url
from bbt.vllm import parse_vllm_url


@pytest.mark.parametrize(
    ("url", "engine"),
    [
        ("vllm+http://gpu:8000", "vllm"),
        ("VLLM+https://gpu", "vllm"),
        ("sglang+http://gpu:30000?embeddings=e.npy", "sglang"),
        ("http://gpu:8000", None),
        (None, None),
        ("", None),
    ],
)
def test_engine_of(url: str | None, engine: str | None) -> None:
    assert engine_of(url) == engine


def test_options_are_converted_and_unknown_ones_refused() -> None:
    root, opts = split_engine_url(
        "x+http://h:1/p?a=3&b=0.5&c=s",
        "x+",
        {"a": "alpha", "b": "beta", "c": "gamma"},
        ints=frozenset({"alpha"}),
        floats=frozenset({"beta"}),
        engine="X",
    )
    assert root == "http://h:1/p"
    assert opts == {"alpha": 3, "beta": 0.5, "gamma": "s"}
    with pytest.raises(ConfigurationError, match="unknown option 'd' in the X URL"):
        split_engine_url("x+http://h?d=1", "x+", {"a": "alpha"}, engine="X")
    with pytest.raises(ConfigurationError, match="not a number"):
        split_engine_url("x+http://h?a=z", "x+", {"a": "alpha"}, ints=frozenset({"alpha"}))


def test_credentials_never_ride_in_the_url() -> None:
    with pytest.raises(ConfigurationError, match="credentials"):
        parse_sglang_url("sglang+http://user:sk-secret@gpu:30000")
    with pytest.raises(ConfigurationError, match="credentials"):
        parse_vllm_url("vllm+http://user:sk-secret@gpu:8000")


def test_both_adapters_parse_their_own_options() -> None:
    root, opts = parse_sglang_url(
        "sglang+http://gpu:30000?config=c.json&embeddings=e.npy&per_request=16&dtype=float16"
    )
    assert root == "http://gpu:30000"
    assert opts == {
        "config": "c.json",
        "embedding_table": "e.npy",
        "sequences_per_request": 16,
        "dtype": "float16",
    }
    assert parse_vllm_url("vllm+http://gpu:8000?hidden_size=64&embedding_std=0.1") == (
        "http://gpu:8000",
        {"hidden_size": 64, "embedding_std": 0.1},
    )
    with pytest.raises(ConfigurationError, match="SGLang URL"):
        parse_sglang_url("sglang+http://gpu?mode=chat")  # vLLM's option, not SGLang's
