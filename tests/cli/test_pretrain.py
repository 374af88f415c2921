"""bbt pretrain: writes a run directory that bbt tune --init run:DIR reads; bad input is one
line and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.cli import app

runner = CliRunner()


def test_a_missing_data_file_is_one_line(tmp_path: Path) -> None:
    res = runner.invoke(
        app, ["pretrain", "--task", "sst2", "--train", str(tmp_path / "no.tsv"),
              "--out", str(tmp_path / "out")],
    )  # fmt: skip
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_pretrain_then_tune_from_it(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from bbt.testing.tiny_models import build_tiny_causal_lm

    model = build_tiny_causal_lm(tmp_path / "gpt2", "gpt2")
    data = tmp_path / "train.tsv"
    rows = [("great movie", 1), ("bad film", 0), ("good fun", 1), ("worst film", 0)] * 3
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    out = tmp_path / "pre"
    res = runner.invoke(
        app, ["pretrain", "--task", "sst2", "--train", str(data), "--out", str(out),
              "--model", str(model), "--k", "2", "--heldout-k", "1", "--n-tokens", "3",
              "--steps", "2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads(res.output.strip().splitlines()[-1])
    assert meta["run_dir"] == str(out)
    assert meta["tokens"] == 3
    assert meta["steps"] == 2
    assert (out / "prompt.npy").is_file()
    again = runner.invoke(
        app, ["pretrain", "--task", "sst2", "--train", str(data), "--out", str(out),
              "--model", str(model), "--k", "2", "--heldout-k", "1", "--steps", "1"],
    )  # fmt: skip
    assert again.exit_code != 0
    assert "already holds a run" in again.output


def test_tune_from_runs_and_from_a_mixture_on_the_command_line(tmp_path: Path) -> None:
    small = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]
    base = ["tune", "--task", "mock", "--budget", "32", "-k", "8", "--dev-k", "4", *small]
    for name, seed in (("a", "1"), ("b", "2")):
        r = runner.invoke(app, [*base, "--seed", seed, "--out", str(tmp_path / name)])
        assert r.exit_code == 0, r.output
    r = runner.invoke(app, [*base, "--init", f"run:{tmp_path / 'a'}", "--out", str(tmp_path / "t")])
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "t" / "manifest.json").read_text())
    assert manifest["initial_prompt"]["kind"] == "run"
    mix = f"mix:{tmp_path / 'a'},{tmp_path / 'b'}"
    r = runner.invoke(
        app, [*base, "--method", "mixture", "--init", mix, "--out", str(tmp_path / "m")]
    )
    assert r.exit_code == 0, r.output
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["method"] == "mixture"
    assert manifest["mixture"] == {"sources": 2}
    r = runner.invoke(app, [*base, "-n", "7", "--init", f"run:{tmp_path / 'a'}"])
    assert r.exit_code != 0
    assert "--n-tokens 5" in r.output
    assert "Traceback" not in r.output


def test_pretrain_publish_shares_the_prompt(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from bbt.server.registry import PromptRegistry
    from bbt.server.shared_prompts import SHARED_TENANT
    from bbt.testing.tiny_models import build_tiny_causal_lm

    model = build_tiny_causal_lm(tmp_path / "gpt2", "gpt2")
    data = tmp_path / "train.tsv"
    rows = [("great movie", 1), ("bad film", 0), ("good fun", 1), ("worst film", 0)] * 3
    data.write_text("sentence\tlabel\n" + "".join(f"{t}\t{y}\n" for t, y in rows))
    path = tmp_path / "registry.sqlite3"
    res = runner.invoke(
        app, ["pretrain", "--task", "sst2", "--train", str(data), "--out", str(tmp_path / "pre"),
              "--model", str(model), "--k", "2", "--heldout-k", "1", "--n-tokens", "3",
              "--steps", "2", "--publish", "--registry", str(path)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = json.loads(res.output.strip().splitlines()[-1])
    registry = PromptRegistry(path)
    try:
        record = registry.get(SHARED_TENANT, meta["shared_id"])
    finally:
        registry.close()
    assert record is not None
    assert record.shape == (3, record.shape[1])
    assert record.recipe["fingerprint"] == meta["fingerprint"]
    assert record.recipe["steps"] == 2
    assert record.recipe["source_task"] == "sst2"
