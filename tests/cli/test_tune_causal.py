"""``bbt tune`` end to end against causal LMs: ``bbt serve`` with a tiny GPT-2 built in the
test (a real subprocess, model detected from its config) and the mock in causal mode."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from typer.testing import CliRunner

from bbt.cli import app
from bbt.server.mock import MockBackend, sample_mock_dataset
from bbt.tuner import read_manifest

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"
SMALL = ["-n", "3", "-d", "10", "--popsize", "4", "-k", "4", "-q"]


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from bbt.testing.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny") / "tiny-gpt2", "gpt2")


@pytest.fixture(scope="module")
def served(tiny_gpt2: Path) -> Iterator[str]:
    """``bbt serve --model tiny-gpt2`` in a subprocess; its base URL."""
    env = {**os.environ, "BBT_SERVER_API_KEYS": "", "HF_HUB_OFFLINE": "1"}
    args = ["serve", "--model", str(tiny_gpt2), "--port", "0", "--dtype", "float32"]
    proc = subprocess.Popen(
        [sys.executable, "-c", "from bbt.cli import main; main()", *args, "--threads", "1"],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:  # "loading ...", then "serving tiny-gpt2 (causal LM, ...)"
            seen.append(line)
            if line.startswith("serving"):
                break
        assert seen, "bbt serve said nothing"
        assert "causal LM" in seen[-1], seen
        match = re.search(r"http://127\.0\.0\.1:(\d+)", seen[-1])
        assert match, seen
        url = match.group(0)
        for _ in range(200):
            try:
                httpx.get(f"{url}/healthz", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        finally:
            if proc.stderr is not None:
                proc.stderr.close()


def test_tune_eval_predict_against_bbt_serve_with_a_causal_lm(served: str, tmp_path: Path) -> None:
    info = httpx.get(f"{served}/v1/models").json()["data"][0]
    assert (info["kind"], info["mask_token"]) == ("causal_lm", None)
    run = tmp_path / "run"
    data = ["--data", str(EXAMPLES / "sst2.tsv")]
    args = ["tune", "--task", "sst2", *data, "--budget", "12", "--base-url", served]
    r = runner.invoke(app, [*args, "--out", str(run), *SMALL])
    assert r.exit_code == 0, r.output
    m = read_manifest(run)
    assert m["status"] == "completed"
    assert m["model"]["id"] == "tiny-gpt2"
    assert m["result"]["calls"] >= 12
    # The sst2 preset's decoder words, one GPT-2 token each (with their Ġ).
    toks = httpx.post(
        f"{served}/v1/tokenize",
        json={"model": "tiny-gpt2", "texts": ["\nSentiment: negative", "\nSentiment: positive"]},
    ).json()
    assert m["candidate_ids"] == [toks["ids"][0][-1], toks["ids"][1][-1]]
    assert [t[-1] for t in toks["tokens"]] == ["Ġnegative", "Ġpositive"]
    r = runner.invoke(app, ["predict", str(run), "a fun movie", "--base-url", served])
    assert r.exit_code == 0, r.output
    assert '"input": "a fun movie"' in r.stdout


def test_a_two_token_verbalizer_word_is_one_clear_error(served: str, tmp_path: Path) -> None:
    r = runner.invoke(
        app,
        [
            "tune",
            "--template",
            "Review: {text}\nSentiment:",
            "--verbalizer",
            "0= negative,1= supercalifragilistic",
            "--data",
            str(EXAMPLES / "sst2.tsv"),
            "--text-field",
            "sentence",
            "--base-url",
            served,
            "--out",
            str(tmp_path / "x"),
            *SMALL,
        ],
    )
    assert r.exit_code == 2, r.output
    assert "Traceback" not in r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("error: verbalizer word ' supercalifragilistic' (label '1') is ")
    assert "['Ġ', 's', 'u', 'p'," in lines[0]  # its tokens, named
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_serve_refuses_a_head_for_a_causal_lm(tiny_gpt2: Path) -> None:
    r = runner.invoke(app, ["serve", "--model", str(tiny_gpt2), "--head", "tied", "--port", "0"])
    assert r.exit_code == 2
    assert "--head is for masked LMs" in r.output
    assert "Traceback" not in r.output


def test_tune_against_the_causal_mock(
    tmp_path: Path, live_mock_server_factory: Callable[..., str]
) -> None:
    url = live_mock_server_factory(backend=MockBackend(hidden_size=32, causal=True))
    run = tmp_path / "mock"
    base = ["tune", "--base-url", url, "--budget", "40"]
    r = runner.invoke(app, [*base, "--task", "mock", "--out", str(run), *SMALL])
    assert r.exit_code == 0, r.output
    m = read_manifest(run)
    assert m["model"]["id"] == "bbt-mock-causal"
    assert m["task"]["causal_template"] == "{text} It was"
    data = tmp_path / "d.jsonl"
    rows = sample_mock_dataset(20, 7)
    data.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in rows))
    r = runner.invoke(app, ["eval", str(run), "--base-url", url, "--data", str(data)])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["n"] == 20
    # A task with a masked template only: one line saying what is missing.
    masked_only = ["--template", "{text} It was {mask} .", "--verbalizer", "0=bad,1=great"]
    masked_only += ["--data", str(data)]
    r = runner.invoke(app, [*base, *masked_only, "--out", str(tmp_path / "y"), *SMALL])
    assert r.exit_code == 2, r.output
    assert "has no template for a causal LM (model 'bbt-mock-causal' is a causal LM" in r.output
    assert "Traceback" not in r.output
