"""``bbt tune``, ``bbt eval`` and ``bbt predict`` against the in-process mock model."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from bbt.cli import app
from bbt.server.mock import MockBackend
from bbt.server.settings import ServerSettings
from bbt.tuner import read_manifest

runner = CliRunner()
SMALL = ["--mock", "--mock-hidden-size", "32", "-n", "5", "-d", "20", "--popsize", "8", "-q"]
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "data"


def test_tune_then_eval_then_predict(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = runner.invoke(app, ["tune", "--task", "mock", "--budget", "80", "--out", str(run), *SMALL])
    assert r.exit_code == 0, r.output
    m = read_manifest(run)
    assert m["status"] == "completed"
    assert m["service"] == {"kind": "mock", "hidden_size": 32, "base_url": None}
    assert m["data"]["k_shot"] == 16

    data = tmp_path / "d.jsonl"
    data.write_text(
        "\n".join(json.dumps({"text": t, "label": y}) for t, y in [("vate sato", 0), ("pepe", 1)])
    )
    r = runner.invoke(app, ["eval", str(run), "--data", str(data)])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout.strip().splitlines()[-1])
    assert metrics["n"] == 2
    assert 0.0 <= metrics["accuracy"] <= 1.0

    r = runner.invoke(app, ["predict", str(run), "vate sato kune", "pepe vate"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [x["input"] for x in lines] == ["vate sato kune", "pepe vate"]
    assert all(set(x["probs"]) == {"negative", "positive"} for x in lines)

    r = runner.invoke(app, ["predict", str(run), "--file", str(data)])
    assert r.exit_code == 0, r.output
    assert len(r.stdout.strip().splitlines()) == 2


def test_tune_with_data_file_and_custom_task(tmp_path: Path) -> None:
    run = tmp_path / "c"
    r = runner.invoke(
        app,
        [
            "tune",
            "--template",
            "{review} It was {mask} .",
            "--verbalizer",
            "0=bad,1=great",
            "--data",
            str(EXAMPLES / "sst2.tsv"),
            "--text-field",
            "sentence",
            "-k",
            "4",
            "--budget",
            "16",
            "--out",
            str(run),
            *SMALL,
        ],
    )
    assert r.exit_code == 0, r.output
    m = read_manifest(run)
    assert m["task"]["template"] == "{review} It was {mask} ."
    assert m["data"]["n_train"] == 8


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--task", "imdb"], "unknown task 'imdb'"),
        (["--task", "sst2"], "--data FILE is required"),
        (["--task", "mock", "--popsize", "1"], "popsize must be at least 2"),
        (["--task", "mock", "--loss", "mse"], "loss must be one of"),
        (["--task", "mock", "--projection", "cauchy"], "projection must be normal or uniform"),
        (["--task", "mock", "-k", "500"], "too few examples per class"),
        (["--task", "mock", "--init", "vocab:99999"], "past the vocabulary"),
        (
            [
                "--template",
                "{text} {mask}",
                "--verbalizer",
                "0=bad,1=great fun",
                "-k",
                "2",
                "--data",
                str(EXAMPLES / "sst2.tsv"),
            ],
            "is 2 tokens",
        ),
        (["--task", "sst2", "--data", "missing.tsv"], "cannot read data file"),
        (["--resume", "nowhere"], "not a run directory"),
        (["--task", "mock", "--template", "{text} {mask}"], "name the task once"),
    ],
)
def test_bad_input_is_one_clear_line_and_a_non_zero_exit(
    tmp_path: Path, args: list[str], message: str
) -> None:
    r = runner.invoke(app, ["tune", *SMALL, "--out", str(tmp_path / "x"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output
    assert r.exception is None or isinstance(r.exception, SystemExit)


def test_eval_and_predict_errors(tmp_path: Path) -> None:
    r = runner.invoke(app, ["predict", str(tmp_path), "some text"])
    assert r.exit_code == 2
    assert "not a run directory" in r.output
    run = tmp_path / "run"
    runner.invoke(app, ["tune", "--task", "mock", "--budget", "16", "--out", str(run), *SMALL])
    r = runner.invoke(app, ["predict", str(run)])
    assert r.exit_code == 2
    assert "one of the two" in r.output
    r = runner.invoke(app, ["eval", str(run), "--data", str(tmp_path / "none.csv")])
    assert r.exit_code == 2
    assert "cannot read data file" in r.output


def test_ctrl_c_leaves_a_resumable_run_and_says_how(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bbt.tuner.tuner import Tuner

    real_step = Tuner.step
    calls = {"n": 0}

    def step(self: Tuner) -> object:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Tuner, "step", step)
    run = tmp_path / "run"
    r = runner.invoke(app, ["tune", *SMALL, "--task", "mock", "--budget", "80", "--out", str(run)])
    assert r.exit_code == 130
    assert f"bbt tune --resume {run}" in r.output
    assert read_manifest(run)["status"] == "interrupted"
    monkeypatch.setattr(Tuner, "step", real_step)
    r = runner.invoke(app, ["tune", "--resume", str(run), "-q"])
    assert r.exit_code == 0, r.output
    assert read_manifest(run)["status"] == "completed"
    assert read_manifest(run)["result"]["calls"] == 80


def test_tune_over_http_with_a_key_stores_no_key(
    tmp_path: Path, live_mock_server_factory: Callable[..., str]
) -> None:
    key = "sk-cli-3f9a1c7e2b-never-on-disk"
    url = live_mock_server_factory(
        settings=ServerSettings(api_keys=[SecretStr(key)]),
        backend=MockBackend(hidden_size=32),
    )
    run = tmp_path / "http"
    base = ["tune", "--task", "mock", "-n", "5", "-d", "20", "--popsize", "8", "-q"]
    args = [*base, "--budget", "32", "--base-url", url, "--out", str(run)]
    r = runner.invoke(app, [*args, "--api-key", "wrong"])
    assert r.exit_code == 2
    assert "401" in r.output
    assert "wrong" not in r.output
    r = runner.invoke(app, [*args, "--api-key", key], env={"BBT_API_KEY": ""})
    assert r.exit_code == 0, r.output
    manifest = read_manifest(run)
    assert manifest["service"] == {"kind": "http", "base_url": url}
    for f in run.iterdir():
        assert key.encode() not in f.read_bytes(), f.name
    r = runner.invoke(app, ["predict", str(run), "vate sato", "--base-url", url, "--api-key", key])
    assert r.exit_code == 0, r.output


def test_a_service_failure_mid_run_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bbt.errors import ServerError
    from bbt.tuner.tuner import Tuner

    real_step = Tuner.step
    calls = {"n": 0}

    def step(self: Tuner) -> object:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ServerError("upstream is down", status_code=503)
        return real_step(self)

    monkeypatch.setattr(Tuner, "step", step)
    run = tmp_path / "run"
    r = runner.invoke(app, ["tune", *SMALL, "--task", "mock", "--budget", "40", "--out", str(run)])
    assert r.exit_code == 2
    assert "upstream is down" in r.output
    assert f"bbt tune --resume {run}" in r.output
    assert "Traceback" not in r.output
    assert read_manifest(run)["status"] == "failed"
