"""``bbt tune --dry-run``: the plan it prints against what the same run really spends."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bbt.cli import _dry_run, app
from bbt.server.mock import MockBackend
from bbt.tuner import read_manifest

runner = CliRunner()
SMALL = ["--task", "mock", "-n", "5", "-d", "20", "--popsize", "8"]


def _figure(output: str, label: str) -> int:
    m = re.search(rf"{label}: (?:at most )?([\d,]+)", output)
    assert m is not None, f"no {label!r} in:\n{output}"
    return int(m.group(1).replace(",", ""))


def _dry_and_real(args: list[str], run: Path) -> tuple[str, dict[str, int], dict[str, int]]:
    dry = runner.invoke(app, ["tune", *args, "--dry-run", "--out", str(run)])
    assert dry.exit_code == 0, dry.output
    assert not run.exists()  # a dry run creates no run directory
    real = runner.invoke(app, ["tune", *args, "-q", "--out", str(run)])
    assert real.exit_code == 0, real.output
    manifest = read_manifest(run)
    return dry.stdout, manifest["usage"], manifest["result"]


def _parts(plan: str) -> dict[str, int]:
    """The terms of the printed sums: training calls, dev bound, requests per kind."""
    calls = re.search(r"= ([\d,]+) training .* \+ (\d+) dev", plan)
    reqs = re.search(
        r"requests: at most [\d,]+ = (\d+) x (\d+) per generation \+ (\d+) x (\d+) per dev "
        r"evaluation \+ (\d+) set-up",
        plan,
    )
    assert calls is not None, plan
    assert reqs is not None, plan
    gens, per_gen, dev_max, per_dev, setup = (int(g) for g in reqs.groups())
    assert int(calls.group(2)) == dev_max
    return {
        "train": int(calls.group(1).replace(",", "")),
        "gens": gens,
        "per_gen": per_gen,
        "dev_max": dev_max,
        "per_dev": per_dev,
        "setup": setup,
    }


@pytest.mark.parametrize(
    ("budget_args", "bound_reached"),
    [
        (["--budget", "85", "--eval-every", "20"], True),  # budget rounded down
        (["--budget", "80", "--eval-every", "100"], True),  # no check: p0 and final only
        # Checks within generations; one finds the same best candidate and costs nothing.
        (["--budget", "64", "--eval-every", "16", "--popsize", "6"], False),
        # The CMA-ES mean is scored at every check and at the end: one more dev call each.
        (["--budget", "85", "--eval-every", "20", "--eval-mean"], True),
    ],
)
def test_mock_plan_matches_the_real_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, budget_args: list[str], bound_reached: bool
) -> None:
    monkeypatch.chdir(tmp_path)
    args = [*SMALL, "--mock", "--mock-hidden-size", "32", *budget_args]
    plan, usage, result = _dry_and_real(args, tmp_path / "run")
    assert not (tmp_path / "runs").exists()
    p = _parts(plan)
    dev = result["dev_calls"]
    assert result["calls"] == p["train"]
    assert dev <= p["dev_max"]
    # With the dev calls the run made, the plan's terms give its usage exactly.
    assert usage["calls"] == p["train"] + dev
    assert usage["requests"] == p["setup"] + p["gens"] * p["per_gen"] + dev * p["per_dev"]
    if bound_reached:
        assert _figure(plan, "API calls") == usage["calls"]
        assert _figure(plan, "requests") == usage["requests"]
    else:
        assert dev < p["dev_max"]
    assert "bytes up/down: none (the in-process mock" in plan


def test_http_plan_matches_the_real_run_byte_for_byte(
    tmp_path: Path, live_mock_server_factory: Callable[..., str]
) -> None:
    backend = MockBackend(hidden_size=32)
    # Limits that force chunking: at most 3 prompts and 12 texts per request.
    limits = backend.info.limits.model_copy(
        update={"max_prompts_per_request": 3, "max_texts_per_request": 12}
    )
    url = live_mock_server_factory(backend=MockBackend(hidden_size=32, limits=limits))
    args = [*SMALL, "--budget", "40", "--eval-every", "16", "--base-url", url]
    plan, usage, _ = _dry_and_real(args, tmp_path / "run")
    assert _figure(plan, "API calls") == usage["calls"]
    assert _figure(plan, "requests") == usage["requests"]
    assert _figure(plan, "bytes up") == usage["bytes_sent"]
    down = re.search(r"bytes down: about ([\d.]+) kB", plan)
    assert down is not None, plan
    assert float(down.group(1)) * 1000 == pytest.approx(usage["bytes_received"], rel=0.02)
    # 8 prompts x 32 texts: 3 prompt groups x 3 text groups, and the plan says why.
    assert "a generation: 9 requests (3 prompt group(s) x 3 text group(s)) because" in plan
    assert "8 prompts > max_prompts_per_request 3" in plan
    assert "32 texts > max_texts_per_request 12" in plan
    assert "a dev evaluation: 3 requests" in plan
    assert re.search(r"wall time: about .*estimate", plan)


def test_bbtv2_http_plan_over_a_deep_session_matches_the_real_run_byte_for_byte(
    tmp_path: Path, live_mock_server_factory: Callable[..., str]
) -> None:
    # Protocol 1.5: the plan sends what a BBTv2 generation sends through a deep session.
    url = live_mock_server_factory(backend=MockBackend(hidden_size=32, num_layers=3))
    args = [*SMALL, "--method", "bbtv2", "--budget", "40", "--eval-every", "16"]
    plan, usage, _ = _dry_and_real([*args, "--base-url", url], tmp_path / "run")
    assert _figure(plan, "API calls") == usage["calls"]
    assert _figure(plan, "requests") == usage["requests"]
    assert _figure(plan, "bytes up") == usage["bytes_sent"]
    full, _, _ = _dry_and_real([*args, "--sessions", "off", "--base-url", url], tmp_path / "f")
    assert usage["bytes_sent"] < _figure(full, "bytes up") / 2


def test_body_limit_is_named_as_the_reason(
    tmp_path: Path, live_mock_server_factory: Callable[..., str]
) -> None:
    backend = MockBackend(hidden_size=32)
    limits = backend.info.limits.model_copy(update={"max_body_bytes": 9000})
    url = live_mock_server_factory(backend=MockBackend(hidden_size=32, limits=limits))
    r = runner.invoke(app, ["tune", *SMALL, "--budget", "16", "--base-url", url, "--dry-run"])
    assert r.exit_code == 0, r.output
    assert re.search(r"a generation: \d+ requests .* > max_body_bytes 9,000", r.stdout), r.stdout


@pytest.mark.parametrize(
    ("gens", "pop", "every", "expected"),
    [
        (10, 8, 20, (4, 5)),  # checks at 24, 40, 64, 80 calls; the last generation is one
        (10, 8, 100, (0, 2)),  # p0 and the final evaluation only
        (0, 8, 20, (0, 1)),  # a budget below one generation: p0 only
        (5, 20, 20, (5, 6)),  # every generation a check, so no separate final one
        (4, 20, 50, (1, 3)),  # one check (60 calls); generation 4 (80) is not: a final one
    ],
)
def test_dev_call_bound(gens: int, pop: int, every: int, expected: tuple[int, int]) -> None:
    assert _dry_run.dev_calls(gens, pop, every, initial=True, has_dev=True) == expected


def test_not_with_resume() -> None:
    r = runner.invoke(app, ["tune", "--resume", "somewhere", "--dry-run"])
    assert r.exit_code == 2
    assert r.output.strip() == "error: --dry-run does not apply to --resume"


def test_dev_call_bound_counts_the_mean() -> None:
    # Checks at 24, 40, 64, 80 calls (the last generation is one), each scoring best and mean.
    assert _dry_run.dev_calls(10, 8, 20, initial=True, has_dev=True, mean=True) == (4, 9)
    # One check (60 calls) and a final evaluation at 80: both with the mean.
    assert _dry_run.dev_calls(4, 20, 50, initial=True, has_dev=True, mean=True) == (1, 5)


def test_dry_run_and_summary_count_input_tokens(tmp_path: Path) -> None:
    """The dry run's token estimate against the tokens the mock counted for the real run
    (an upper bound: dev checks and early stops only lower it), and the summary line."""
    args = [*SMALL, "--budget", "32", "--eval-every", "16"]
    dry, usage, _ = _dry_and_real(args, tmp_path / "run")
    m = re.search(r"input tokens: about ([\d,]+)", dry)
    assert m is not None, dry
    planned = int(m.group(1).replace(",", ""))
    assert usage["tokens"] > 0
    assert 0.8 * usage["tokens"] <= planned <= 1.25 * usage["tokens"]
    assert "output tokens: 0" in dry
    real = runner.invoke(app, ["tune", *args, "--out", str(tmp_path / "again")])
    assert real.exit_code == 0, real.output
    assert f"{usage['tokens']:,} input tokens" in real.output
