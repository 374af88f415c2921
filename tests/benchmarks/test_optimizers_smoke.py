"""``benchmarks/optimizers.py`` and ``benchmarks/stopping.py`` in ``--smoke`` mode: every
optimiser and the stopping replay at tiny sizes on the mock model (seconds), through the
shared harness in ``benchmarks/_common.py``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks._bench import SHARED_DATA, bench_module, go_offline

pytestmark = pytest.mark.skipif(
    not (SHARED_DATA / "sst2" / "train.tsv").is_file(),
    reason=f"the benchmark data is not at {SHARED_DATA}",
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    go_offline(monkeypatch)


def _result(path: Path) -> dict[str, Any]:
    assert path.is_file(), f"{path} was not written"
    data: dict[str, Any] = json.loads(path.read_text())
    assert data["command"]
    assert data["machine"]["cpus"]
    assert data["wall_seconds"] > 0
    assert isinstance(data["cpu_flags"], list)
    return data


def test_optimizers_smoke_with_eval_mean_considers_the_cma_mean(tmp_path: Path) -> None:
    """``--eval-mean`` reaches the product's TuneConfig: the CMA-ES mean is scored on dev at
    each check, so the run spends more dev calls than the same run without it."""
    opt = bench_module("optimizers")
    common = ["--smoke", "--optimizers", "cma", "--out-dir", str(tmp_path)]
    assert opt.main([*common, "--tag", "plain"]) == 0
    assert opt.main([*common, "--eval-mean", "--tag", "mean"]) == 0
    plain, mean = _result(tmp_path / "plain.json"), _result(tmp_path / "mean.json")
    assert mean["args"]["eval_mean"] is True
    assert plain["args"]["eval_mean"] is False
    assert mean["runs"][0]["calls"] == plain["runs"][0]["calls"]
    assert mean["runs"][0]["dev_calls"] > plain["runs"][0]["dev_calls"]


def test_optimizers_smoke_sigma_is_compensated_by_the_projection_and_alpha_is_not(
    tmp_path: Path,
) -> None:
    """``--sigma`` and ``--alpha`` reach the product's TuneConfig. A's scale is
    alpha * std_E / (sqrt(d) * sigma) and CMA-ES starts at z = 0 with step sigma, so with no
    bound a run with another sigma tries the same prompts (the same curve); alpha is the
    step in prompt space."""
    opt = bench_module("optimizers")
    common = ["--smoke", "--optimizers", "cma", "--out-dir", str(tmp_path)]
    runs = {}
    for tag, flags in {"base": [], "sigma": ["--sigma", "4"], "alpha": ["--alpha", "2"]}.items():
        assert opt.main([*common, *flags, "--tag", tag]) == 0
        runs[tag] = _result(tmp_path / f"{tag}.json")
    assert runs["sigma"]["args"]["sigma"] == 4.0
    assert runs["alpha"]["args"]["alpha"] == 2.0
    base, sigma = runs["base"]["runs"][0], runs["sigma"]["runs"][0]
    assert sigma["selections"] == base["selections"]
    assert sigma["curve"] == base["curve"]
    assert runs["alpha"]["runs"][0]["selections"] != base["selections"]


def test_optimizers_smoke_runs_every_optimizer_on_the_mock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_module("optimizers").main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| optimizer | held-out @8 |" in out
    data = _result(tmp_path / "optimizers_smoke.json")
    assert data["args"]["smoke"] is True
    runs = {r["optimizer"]: r for r in data["runs"]}
    assert set(runs) == {"cma", "sepcma", "ipop", "gp"}
    # cma runs the reference budget, the others --budget; no run passes its budget.
    assert runs["cma"]["budget"] == 24
    assert all(r["budget"] == 16 for name, r in runs.items() if name != "cma")
    for r in runs.values():
        assert 0 < r["calls"] <= r["budget"]
        assert 0.0 <= r["heldout"] <= 1.0
        assert r["curve"][0] == [0, r["p0_heldout"]]
    assert set(data["summary"]) >= {"target", "cma", "sepcma", "ipop", "gp"}


def test_stopping_smoke_replays_the_stopping_rule_on_the_mock(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_module("stopping").main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| patience (calls) |" in out
    data = _result(tmp_path / "stopping_smoke.json")
    (run,) = data["runs"]
    assert run["optimizer"] == "cma"
    assert run["budget"] == 24
    # One dev check a generation (eval_every = popsize): a selection per generation.
    assert len(run["selections"]) == run["calls"] // 4
    for patience in ("8", "16"):
        (saved,) = data["summary"][patience]["calls_saved"]
        assert 0 <= saved <= 24


def test_stopping_from_result_replays_the_optimizers_cma_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench_module("optimizers").main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    first = tmp_path / "optimizers_smoke.json"
    argv = ["--from-result", str(first), "--patience", "8", "--out-dir", str(tmp_path)]
    assert bench_module("stopping").main([*argv, "--tag", "replayed"]) == 0
    replayed = _result(tmp_path / "replayed.json")
    cma = [r for r in json.loads(first.read_text())["runs"] if r["optimizer"] == "cma"]
    assert replayed["runs"] == cma
    assert replayed["args"]["budget"] == 24
    capsys.readouterr()
