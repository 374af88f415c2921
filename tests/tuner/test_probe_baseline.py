"""bbt.tuner.probe_baseline: ``bbt eval --baseline`` on a probe run scores the plain probe
(the same method at z = 0), not p0 through the verbalizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.cli import app
from bbt.tuner import read_manifest

runner = CliRunner()
SMALL = ["--mock", "--task", "mock", "--budget", "40", "-q", "--no-plot"]


def _flat(run: Path, dst: Path) -> Path:
    rows = [json.loads(line) for line in (run / "dev.jsonl").read_text().splitlines()]
    dst.write_text("".join(json.dumps({**r["fields"], "label": r["label"]}) + "\n" for r in rows))
    return dst


def _baseline(run: Path, data: Path) -> tuple[dict[str, object], str]:
    r = runner.invoke(app, ["eval", str(run), "--data", str(data), "--mock", "--baseline"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1]), r.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("method", ["probe", "probe-tuned"])
def test_baseline_of_a_probe_run_is_the_plain_probe(tmp_path: Path, method: str) -> None:
    run = tmp_path / "run"
    r = runner.invoke(app, ["tune", *SMALL, "--method", method, "--out", str(run)])
    assert r.exit_code == 0, r.output
    report, line = _baseline(run, _flat(run, tmp_path / "dev.jsonl"))
    result = read_manifest(run)["result"]
    p0 = report["p0"]
    assert isinstance(p0, dict)
    # On the run's own dev rows, the plain probe scores what the run scored at z = 0.
    assert p0["accuracy"] == result["initial_dev_accuracy"]
    assert report["accuracy"] == result["dev_accuracy"]
    assert report["baseline"] == "plain probe (p0)"
    assert "plain probe (p0) " in line
    if method == "probe":  # no tuning: the baseline is the run itself
        assert report["gain"] == 0


def test_baseline_of_a_verbalizer_run_is_still_p0(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = runner.invoke(app, ["tune", *SMALL, "--out", str(run)])
    assert r.exit_code == 0, r.output
    report, line = _baseline(run, _flat(run, tmp_path / "dev.jsonl"))
    assert report["baseline"] == "p0"
    assert ": p0 " in line


def test_the_baseline_of_a_loo_run_picks_its_regularisation_by_loo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run tuned with the leave-one-out objective gets a baseline head whose C is chosen by
    that objective too, not by the default k-fold one."""
    from bbt.client import LocalClient
    from bbt.server.mock import MockBackend
    from bbt.tuner import probe_baseline
    from bbt.tuner.predict import TunedPrompt

    run = tmp_path / "run"
    r = runner.invoke(app, ["tune", *SMALL, "--method", "probe-tuned", "--out", str(run)])
    assert r.exit_code == 0, r.output
    path = run / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["probe"]["objective"] = "loo"
    path.write_text(json.dumps(manifest))
    seen: list[str] = []
    real = probe_baseline.cv_score

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(str(kwargs.get("objective", "kfold")))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(probe_baseline, "cv_score", spy)
    tuned = TunedPrompt.load(run)
    service = LocalClient(MockBackend(hidden_size=64))
    p0 = tuned.prompt + 0.5  # not the run's prompt: the head is refitted under p0
    head = probe_baseline.plain_probe_head(tuned, service, p0)
    assert seen == ["loo"]
    assert head.kind == "centroid"
