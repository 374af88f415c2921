from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bbt.client import LocalClient
from bbt.errors import ConfigurationError
from bbt.tuner import InitialPrompt, build_initial_prompt

from .conftest import H
from .fakes import WordService


def test_zeros(service: LocalClient) -> None:
    p0, _ = build_initial_prompt(InitialPrompt(), service, 4)
    assert p0.shape == (4, H)
    assert not p0.any()


def test_vocab_sample_is_seeded_and_vocab_range_is_fixed(service: LocalClient) -> None:
    a, _ = build_initial_prompt(InitialPrompt("vocab_sample", seed=1), service, 6)
    b, _ = build_initial_prompt(InitialPrompt("vocab_sample", seed=1), service, 6)
    c, _ = build_initial_prompt(InitialPrompt("vocab_sample", seed=2), service, 6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    r, _ = build_initial_prompt(InitialPrompt("vocab_range", start=100), service, 3)
    np.testing.assert_array_equal(r, service.embed([100, 101, 102]))
    with pytest.raises(ConfigurationError, match="past the vocabulary"):
        build_initial_prompt(InitialPrompt("vocab_range", start=10_000), service, 3)


def test_text_is_embedded_and_cycled_to_n() -> None:
    svc = WordService()
    p0, _ = build_initial_prompt(InitialPrompt("text", text="a b c"), svc, 5)
    ids = svc.tokenize(["a b c"]).ids[0]
    assert p0[:, 0].tolist() == [float(i) for i in (ids * 2)[:5]]  # chunked under the limit


def test_file_checks_shape_and_records_hash(tmp_path: Path, service: LocalClient) -> None:
    f = tmp_path / "p.npy"
    np.save(f, np.ones((3, H), dtype=np.float32))
    p0, rec = build_initial_prompt(InitialPrompt("file", path=str(f)), service, 3)
    assert p0.sum() == 3 * H
    assert rec.sha256
    assert len(rec.sha256) == 64
    with pytest.raises(ConfigurationError, match=r"needs \[4, 32\]"):
        build_initial_prompt(InitialPrompt("file", path=str(f)), service, 4)
    with pytest.raises(ConfigurationError, match="cannot read"):
        build_initial_prompt(InitialPrompt("file", path=str(tmp_path / "no.npy")), service, 3)


def test_cli_specs() -> None:
    assert InitialPrompt.parse("zeros").kind == "zeros"
    assert InitialPrompt.parse("vocab", seed=4) == InitialPrompt("vocab_sample", seed=4)
    assert InitialPrompt.parse("vocab:1000") == InitialPrompt("vocab_range", start=1000)
    assert InitialPrompt.parse("text:hello world").text == "hello world"
    assert InitialPrompt.parse("file:x.npy").path == "x.npy"
    with pytest.raises(ConfigurationError, match="cannot read initial prompt"):
        InitialPrompt.parse("random")
