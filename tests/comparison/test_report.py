from __future__ import annotations

import json
from pathlib import Path

import pytest

from bbt.client import LocalClient
from bbt.comparison import CompareSettings, compare, report
from bbt.comparison.runner import Comparison
from bbt.tuner.data import Example
from bbt.tuner.tasks import Task


@pytest.fixture
def comp(mock_service: LocalClient, task: Task, rows: list[Example]) -> Comparison:
    settings = CompareSettings(
        ["manual", "feature-lr", "bbt", "bbtv2"],
        seeds=2,
        k_shot=2,
        budget=20,
        n_test=10,
        price_per_1k_tokens=0.01,
        n_tokens=4,
    )
    return compare(mock_service, task, rows, settings)


def test_compare_json_holds_one_entry_per_method_and_seed(comp: Comparison, tmp_path: Path) -> None:
    paths = report.write(comp, tmp_path, with_plot=False)
    data = json.loads((tmp_path / report.JSON_FILE).read_text())
    assert len(data["methods"]) == 8
    assert len(paths) == 2
    for entry in data["methods"]:
        for key in ("method", "seed", "metric", "calls", "input_tokens", "output_tokens", "cost"):
            assert key in entry
    bbt = [e for e in data["methods"] if e["method"] == "bbt"]
    assert bbt[0]["calls"] > 0
    assert bbt[0]["curve"]
    assert bbt[0]["cost"] == pytest.approx(bbt[0]["input_tokens"] / 1000 * 0.01)


def test_markdown_table_has_mean_std_and_failures(comp: Comparison) -> None:
    text = report.markdown(comp)
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "±" in rows["manual"]
    assert "±" in rows["feature-lr"]
    assert "failed" in rows["bbtv2"]  # the plain mock has no deep prompts
    summary = {r["method"]: r for r in report.summary_rows(comp)}
    lr = [100 * float(r.metric or 0) for r in comp.runs if r.method == "feature-lr"]
    assert summary["feature-lr"]["mean"] == pytest.approx(sum(lr) / 2)


def test_plot_is_written(comp: Comparison, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = report.plot(comp, tmp_path / "p.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.pyplot as plt

    assert not plt.get_fignums()  # closed after saving


def test_rich_table_prints(comp: Comparison, capsys: pytest.CaptureFixture[str]) -> None:
    report.print_table(comp)
    assert "feature-lr" in capsys.readouterr().out
