"""``bbt tune`` / ``eval`` / ``predict`` against the SGLang fake over HTTP (uvicorn on
loopback), selected by a ``sglang+http://`` URL; the dry run plans its requests exactly;
bad input is one ``error:`` line each, no traceback."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.cli import app
from bbt.testing.sglang_fake import SGLangFake, serve_sglang_fake
from bbt.tuner import read_manifest

runner = CliRunner()
SMALL = ["-n", "5", "-d", "20", "--popsize", "8", "-k", "4", "-q", "--no-plot"]


@pytest.fixture(autouse=True)
def _no_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("BBT_BASE_URL", "BBT_API_KEY", "BBT_MODEL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    return SGLangFake().write_model_files(tmp_path / "model")


@pytest.fixture
def serve() -> Iterator[object]:
    stack: list[object] = []

    def start(fake: SGLangFake) -> str:
        cm = serve_sglang_fake(fake)
        url = cm.__enter__()
        stack.append(cm)
        return url

    yield start
    for cm in stack:
        cm.__exit__(None, None, None)  # type: ignore[attr-defined]


def _url(base: str, **options: object) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    return "sglang+" + base + ("?" + query if query else "")


def test_tune_eval_predict(tmp_path: Path, files: tuple[Path, Path], serve: object) -> None:
    cfg, emb = files
    fake = SGLangFake(api_key="sk-sgl-cli-canary")
    url = _url(serve(fake), config=cfg, embeddings=emb)  # type: ignore[operator]
    run = tmp_path / "run"
    key = ["--base-url", url, "--api-key", "sk-sgl-cli-canary"]
    r = runner.invoke(
        app, ["tune", "--task", "mock", *key, "--budget", "24", "--out", str(run), *SMALL]
    )
    assert r.exit_code == 0, r.output
    m = read_manifest(run)
    assert m["status"] == "completed"
    assert m["service"]["kind"] == "sglang"
    assert fake.counters.completions > 0
    assert "sk-sgl-cli-canary" not in (run / "manifest.json").read_text()
    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in [("vate sato", 0), ("pepe", 1)])
    )
    r = runner.invoke(app, ["eval", str(run), "--data", str(data), *key])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout.strip().splitlines()[-1])["n"] == 2
    r = runner.invoke(app, ["predict", str(run), "vate sato kune", *key])
    assert r.exit_code == 0, r.output


def test_dry_run_plans_sglang_requests_as_the_run_sends_them(
    tmp_path: Path, files: tuple[Path, Path], serve: object
) -> None:
    cfg, emb = files
    url = _url(serve(SGLangFake()), config=cfg, embeddings=emb)  # type: ignore[operator]
    args = ["tune", "--task", "mock", "--base-url", url, "--budget", "24", "--eval-every", "16"]
    args += [*SMALL, "--out", str(tmp_path / "run")]
    dry = runner.invoke(app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "(sglang)" in dry.stdout
    real = runner.invoke(app, args)
    assert real.exit_code == 0, real.output
    usage = read_manifest(tmp_path / "run")["usage"]
    requests = re.search(r"requests: at most ([\d,]+) = \d+ x (\d+) per generation", dry.stdout)
    sent = re.search(r"bytes up: ([\d,]+)", dry.stdout)
    assert requests is not None, dry.stdout
    assert sent is not None, dry.stdout
    assert int(requests.group(1).replace(",", "")) == usage["requests"]
    # Numbers are text: the plan counts each soft-prompt number at its widest, an upper
    # bound that the run's mostly shorter numbers stay close to.
    planned = int(sent.group(1).replace(",", ""))
    assert usage["bytes_sent"] <= planned <= 1.25 * usage["bytes_sent"]
    assert int(requests.group(2)) == 8  # 8 prompts, each on its 8 texts in one request


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
    base = serve(SGLangFake())  # type: ignore[operator]
    tune = ["tune", "--task", "mock", "--budget", "8", "--out", str(tmp_path / "x"), *SMALL]
    radix = serve(SGLangFake(disable_radix_cache=False))  # type: ignore[operator]
    _fails([*tune, "--base-url", _url(radix, config=cfg, embeddings=emb)], "--disable-radix-cache")
    _fails([*tune, "--base-url", _url(base, config=cfg)], "input-embedding table")
    _fails(
        [*tune, "--base-url", _url(base, embeddings=emb, hidden_size=4096)], "hidden-size mismatch"
    )
    _fails(
        [*tune, "--base-url", _url(base, embeddings=emb, colour="red")], "unknown option 'colour'"
    )
