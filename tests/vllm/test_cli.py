"""``bbt tune`` / ``eval`` / ``predict`` against the vLLM fake over HTTP (uvicorn on loopback),
selected by a ``vllm+http://`` URL; bad input is one ``error:`` line each, no traceback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.cli import app
from bbt.testing.vllm_fake import VLLMFake, serve_vllm_fake
from bbt.tuner import read_manifest

runner = CliRunner()
SMALL = ["-n", "5", "-d", "20", "--popsize", "8", "-k", "4", "-q", "--no-plot"]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BBT_BASE_URL", "BBT_API_KEY", "BBT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return VLLMFake().write_model_files(tmp_path / "model")


@pytest.fixture
def serve() -> Iterator[object]:
    """``serve(fake)`` -> the fake's base URL, stopped at teardown."""
    stack: list[object] = []

    def start(fake: VLLMFake) -> str:
        cm = serve_vllm_fake(fake)
        url = cm.__enter__()
        stack.append(cm)
        return url

    yield start
    for cm in stack:
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


def _url(base: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return "vllm+" + base + ("?" + query if query else "")


def test_tune_eval_predict_in_embedding_table_mode(
    tmp_path: Path, files: tuple[Path, Path], serve: object
) -> None:
    cfg, emb = files
    fake = VLLMFake(api_key="sk-cli-canary-9")
    url = _url(serve(fake), config=cfg, embeddings=emb)  # type: ignore[operator]
    run = tmp_path / "run"
    args = ["tune", "--task", "mock", "--base-url", url, "--api-key", "sk-cli-canary-9"]
    r = runner.invoke(app, [*args, "--budget", "24", "--out", str(run), *SMALL])
    assert r.exit_code == 0, r.output
    m = read_manifest(run)
    assert m["status"] == "completed"
    assert m["model"]["mask_token"] is None
    assert m["service"]["kind"] == "vllm"
    assert fake.counters.completions > 0
    assert fake.counters.chat == 0
    assert "sk-cli-canary-9" not in (run / "manifest.json").read_text()

    key = ["--base-url", url, "--api-key", "sk-cli-canary-9"]
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in [("vate sato", 0), ("pepe", 1)])
    )
    r = runner.invoke(app, ["eval", str(run), "--data", str(data), *key])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["n"] == 2
    r = runner.invoke(app, ["predict", str(run), "vate sato kune", *key])
    assert r.exit_code == 0, r.output
    (line,) = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert set(line["probs"]) == {"negative", "positive"}


def test_tune_in_black_box_mode(tmp_path: Path, files: tuple[Path, Path], serve: object) -> None:
    cfg, _ = files
    fake = VLLMFake()
    url = _url(serve(fake), config=cfg, embedding_std=0.05)  # type: ignore[operator]
    run = tmp_path / "bb"
    r = runner.invoke(
        app,
        ["tune", "--task", "mock", "--base-url", url, "--budget", "16", "--out", str(run), *SMALL],
    )
    assert r.exit_code == 0, r.output
    assert read_manifest(run)["status"] == "completed"
    assert fake.counters.chat > 0
    assert fake.counters.completions == 0


def _fails(args: list[str], *needles: str) -> None:
    r = runner.invoke(app, args)
    assert r.exit_code != 0
    err = r.stderr if r.stderr else r.output
    assert err.startswith("error: "), err
    assert "Traceback" not in r.output
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, err


def test_bad_input_is_one_clear_error_each(
    tmp_path: Path, files: tuple[Path, Path], serve: object
) -> None:
    cfg, emb = files
    base = serve(VLLMFake())  # type: ignore[operator]
    tune = ["tune", "--task", "mock", "--budget", "8", "--out", str(tmp_path / "x"), *SMALL]
    # A verbalizer word of two tokens.
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": f"pepe {i}", "label": i % 2}) for i in range(16)))
    _fails(
        [
            *tune[:1],
            "--data",
            str(data),
            "--template",
            "{text} It was",
            "--verbalizer",
            "0= very bad,1= great",
            "--base-url",
            _url(base, config=cfg, embeddings=emb),
            *tune[3:],
        ],
        "' very bad'",
        "is 2 tokens",
    )
    # A server without --enable-prompt-embeds.
    no_embeds = serve(VLLMFake(enable_prompt_embeds=False))  # type: ignore[operator]
    _fails(
        [*tune, "--base-url", _url(no_embeds, config=cfg, embeddings=emb)], "--enable-prompt-embeds"
    )
    # A hidden size that contradicts the table.
    _fails(
        [*tune, "--base-url", _url(base, embeddings=emb, hidden_size=4096)], "hidden-size mismatch"
    )
    # An old vLLM.
    old = serve(VLLMFake(version="0.25.0"))  # type: ignore[operator]
    _fails([*tune, "--base-url", _url(old, config=cfg, embeddings=emb)], "older than 0.26.0")
    # Nothing that says the hidden size.
    _fails([*tune, "--base-url", _url(base)], "hidden size is unknown")


@pytest.mark.parametrize("table", [False, True], ids=["black-box", "embedding-table"])
def test_dry_run_plans_vllm_requests_as_the_run_sends_them(
    tmp_path: Path, files: tuple[Path, Path], serve: object, table: bool
) -> None:
    """The dry run plans a ``vllm+`` URL with the adapter's own requests (one chat request
    per prompt and text, or one completions request per prompt and text group), not protocol
    v1's: its requests and bytes up are the real run's exactly."""
    cfg, emb = files
    opts = {"config": cfg, "embeddings": emb} if table else {"config": cfg, "embedding_std": 0.05}
    url = _url(serve(VLLMFake()), **opts)  # type: ignore[operator]
    args = ["tune", "--task", "mock", "--base-url", url, "--budget", "24", "--eval-every", "16"]
    args += [*SMALL, "--out", str(tmp_path / "run")]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    real = runner.invoke(app, args)
    assert real.exit_code == 0, real.output
    usage = read_manifest(tmp_path / "run")["usage"]
    requests = re.search(r"requests: at most ([\d,]+) = \d+ x (\d+) per generation", dry.stdout)
    sent = re.search(r"bytes up: ([\d,]+)", dry.stdout)
    assert requests is not None, dry.stdout
    assert sent is not None, dry.stdout
    assert int(requests.group(1).replace(",", "")) == usage["requests"]
    assert int(sent.group(1).replace(",", "")) == usage["bytes_sent"]
    # 8 prompts x 8 texts: 64 chat requests, or 8 completions requests of 8 sequences.
    assert int(requests.group(2)) == (8 if table else 64)
