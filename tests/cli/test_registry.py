"""bbt registry publish/list/remove: the operator shares a run's prompt in the server's
registry file; a user's bbt tune --init prompt:ID starts from it over HTTP; bad input is one
line and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import SecretStr
from typer.testing import CliRunner

from bbt.cli import app
from bbt.server import MockBackend, ServerSettings
from bbt.server.registry import PromptRegistry
from bbt.tuner.manifest import read_manifest
from bbt.tuner.transfer import model_fingerprint, prompt_sha256

runner = CliRunner()
SMALL = ["-n", "5", "-d", "20", "--popsize", "8", "-q", "--budget", "16", "-k", "8", "--dev-k", "4"]
KEY = "sk-user-of-the-service-1234"


def _one_line_failure(args: list[str], words: str) -> None:
    res = runner.invoke(app, args)
    assert res.exit_code != 0
    assert "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert words in res.output


def _source(tmp_path: Path) -> Path:
    run = tmp_path / "source"
    mock = ["--mock", "--mock-hidden-size", "32"]
    res = runner.invoke(app, ["tune", "--task", "mock", *mock, *SMALL, "--out", str(run)])
    assert res.exit_code == 0, res.output
    return run


def test_publish_list_remove_then_tune_from_the_shared_prompt(tmp_path: Path) -> None:
    from bbt.server.app import create_app
    from bbt.testing import LiveServer

    run = _source(tmp_path)
    path = tmp_path / "registry.sqlite3"
    registry = PromptRegistry(path)
    settings = ServerSettings(api_keys=[SecretStr(KEY)])
    try:
        with LiveServer(
            create_app(MockBackend(hidden_size=32), settings, registry=registry)
        ) as live:
            # Published into the file the running server serves from.
            res = runner.invoke(app, ["registry", "publish", str(run), "--registry", str(path),
                                      "--label", "mock source"])  # fmt: skip
            assert res.exit_code == 0, res.output
            shared = json.loads(res.stdout)
            assert shared["new"] is True
            assert shared["source_task"] == "mock"
            assert shared["tokens"] == 5
            assert shared["fingerprint"] == model_fingerprint(read_manifest(run)["model"])
            again = runner.invoke(app, ["registry", "publish", str(run), "--registry", str(path)])
            assert json.loads(again.stdout)["id"] == shared["id"]
            assert json.loads(again.stdout)["new"] is False
            listed = runner.invoke(app, ["registry", "list", "--registry", str(path)])
            assert [json.loads(x)["id"] for x in listed.stdout.splitlines()] == [shared["id"]]

            out = tmp_path / "target"
            remote = ["--base-url", live.base_url, "--api-key", KEY]
            tuned = runner.invoke(app, ["tune", "--task", "mock", *remote, *SMALL, "--out",
                                        str(out), "--init", f"prompt:{shared['id']}"])  # fmt: skip
            assert tuned.exit_code == 0, tuned.output
            p0 = np.load(out / "p0.npy")
            np.testing.assert_array_equal(p0, np.load(run / "prompt.npy"))
            recorded = read_manifest(out)["initial_prompt"]
            assert recorded["kind"] == "prompt"
            assert recorded["prompt_id"] == shared["id"]
            assert recorded["sha256"] == prompt_sha256(p0) == shared["sha256"]
            assert recorded["model"] == shared["fingerprint"]

            gone = runner.invoke(app, ["registry", "remove", shared["id"], "--registry", str(path)])
            assert gone.exit_code == 0, gone.output
            _one_line_failure(
                ["tune", "--task", "mock", *remote, *SMALL, "--init", f"prompt:{shared['id']}"],
                "no such prompt",
            )
    finally:
        registry.close()
    _one_line_failure(
        ["registry", "remove", shared["id"], "--registry", str(path)], "no shared prompt"
    )


def test_bad_input_is_one_line(tmp_path: Path) -> None:
    path = str(tmp_path / "r.sqlite3")
    _one_line_failure(["registry", "publish", str(tmp_path / "nowhere"), "--registry", path],
                      "not a run directory")  # fmt: skip
    _one_line_failure(["registry", "list", "--registry", "memory"], "registry file")
    mock = ["--mock", "--mock-hidden-size", "32"]
    _one_line_failure(["tune", "--task", "mock", *mock, *SMALL, "--init", "prompt:bp_" + "x" * 22],
                      "no such prompt")  # fmt: skip
