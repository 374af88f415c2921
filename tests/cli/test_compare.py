from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bbt.cli import app

runner = CliRunner()


def _data(tmp_path: Path) -> Path:
    path = tmp_path / "reviews.csv"
    lines = ["text,label"]
    for i in range(40):
        lines.append(
            f"great lovely film {i},positive" if i % 2 else f"awful dull film {i},negative"
        )
    path.write_text("\n".join(lines) + "\n")
    return path


ARGS = ["--template", "{text} It was {mask} .", "--verbalizer", "negative=bad,positive=great"]


def test_compare_on_the_mock_writes_json_table_and_plot(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--mock", *ARGS, "--data", str(_data(tmp_path)), "--out", str(out)]
    args += ["--methods", "manual,feature-lr,bbt", "--seeds", "2", "-k", "2", "--budget", "20"]
    args += ["--n-test", "10", "--price-per-1k-tokens", "0.01", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert [m["method"] for m in data["methods"]] == ["manual", "feature-lr", "bbt"] * 2
    assert (out / "compare.md").read_text().startswith("| method |")
    assert (out / "compare.png").stat().st_size > 0
    assert "feature-lr" in result.output


def test_dry_run_prices_the_comparison_and_calls_nothing(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--mock", *ARGS, "--data", str(_data(tmp_path)), "--out", str(out)]
    args += ["--budget", "40", "--dry-run", "--price-per-1k-tokens", "0.5"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "dry run: 7 methods x 3 seeds" in result.output
    assert "cost at 0.5 per 1k tokens" in result.output
    assert not out.exists()


def test_bad_input_is_one_line_without_traceback(tmp_path: Path) -> None:
    data = str(_data(tmp_path))
    result = runner.invoke(app, ["compare", "--mock", *ARGS, "--data", data, "--methods", "x"])
    assert result.exit_code != 0
    assert "unknown method 'x'" in result.output
    assert "Traceback" not in result.output
    wb = ["compare", "--mock", *ARGS, "--data", data, "--methods", "whitebox-lora"]
    result = runner.invoke(app, wb)
    assert result.exit_code != 0
    assert "weights on this machine" in result.output


def test_list_methods(tmp_path: Path) -> None:
    result = runner.invoke(app, ["compare", "--list-methods", "--data", str(tmp_path)])
    assert result.exit_code == 0
    assert "whitebox-lora" in result.output


def test_compare_on_the_shipped_reviews_csv(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2] / "examples" / "data"
    out = tmp_path / "reviews"
    args = ["compare", "--mock", *ARGS, "--data", str(root / "reviews.csv")]
    args += ["--test", str(root / "reviews_test.csv"), "--methods", "manual,icl,feature-lr"]
    args += ["--seeds", "1", "-k", "4", "--out", str(out), "--no-plot", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "compare.json").read_text())
    assert data["n_test"] == 40
    assert len(data["methods"]) == 3


def test_runs_paid_for_are_on_disk_when_a_later_method_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """compare.json is rewritten after every method run: an interruption (here Ctrl-C
    during the second seed's bbt run) keeps the runs that were already paid for."""
    import bbt.comparison.runner as runner_module

    real = runner_module.run_method
    calls: list[str] = []

    def interrupted(name: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == 4:  # seed 1's first method: seed 0's two runs are done
            raise KeyboardInterrupt
        return real(name, *args, **kwargs)

    monkeypatch.setattr(runner_module, "run_method", interrupted)
    out = tmp_path / "cmp"
    args = ["compare", "--mock", *ARGS, "--data", str(_data(tmp_path)), "--out", str(out)]
    args += ["--methods", "manual,feature-lr,bbt", "--seeds", "2", "-k", "2", "--budget", "20"]
    args += ["--n-test", "10", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    data = json.loads((out / "compare.json").read_text())
    assert [(m["method"], m["seed"]) for m in data["methods"]] == [
        ("manual", 0),
        ("feature-lr", 0),
        ("bbt", 0),
    ]


def test_bbt_pretrained_row_from_a_run_and_refused_without_one(tmp_path: Path) -> None:
    data = _data(tmp_path)
    source = tmp_path / "source"
    tuned = runner.invoke(
        app,
        ["tune", "--mock", *ARGS, "--data", str(data), "-k", "4", "--budget", "40",
         "--n-tokens", "5", "--out", str(source), "-q"],
    )  # fmt: skip
    assert tuned.exit_code == 0, tuned.output
    out = tmp_path / "cmp"
    args = ["compare", "--mock", *ARGS, "--data", str(data), "--out", str(out), "-q"]
    args += ["--methods", "bbt,bbt-pretrained", "--seeds", "1", "-k", "2", "--budget", "20"]
    args += ["--n-tokens", "5", "--n-test", "10"]
    refused = runner.invoke(app, args)
    assert refused.exit_code != 0
    assert "bbt-pretrained needs --init run:DIR" in refused.output
    assert "Traceback" not in refused.output
    assert not (out / "compare.json").exists()  # refused before any call
    result = runner.invoke(app, [*args, "--init", f"run:{source}"])
    assert result.exit_code == 0, result.output
    data_out = json.loads((out / "compare.json").read_text())
    assert [m["method"] for m in data_out["methods"]] == ["bbt", "bbt-pretrained"]
    assert data_out["methods"][1]["notes"]["init"] == f"run:{source}"


def test_curve_points_and_manual_ppl_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    args = ["compare", "--mock", *ARGS, "--data", str(_data(tmp_path)), "--out", str(out)]
    args += ["--methods", "manual-ppl,bbt", "--seeds", "1", "-k", "2", "--budget", "20"]
    args += ["--n-test", "10", "--curve-points", "0", "--no-plot", "-q"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ppl, bbt = json.loads((out / "compare.json").read_text())["methods"]
    # The masked mock has no prompt log-probabilities: dev accuracy, and the table says so.
    assert ppl["notes"]["selected_by"] == "dev accuracy"
    assert "manual-ppl: the service returns no prompt" in (out / "compare.md").read_text()
    assert not [p for p in bbt["curve"] if p["split"] == "test"]
    assert bbt["curve_eval"]["calls"] == 0
    dry = runner.invoke(app, [*args[:-4], "--curve-points", "2", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "held-out includes 2 curve checkpoints" in dry.output
