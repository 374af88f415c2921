"""Every benchmark script, run in ``--smoke`` mode (tiny sizes), so none of them can rot.

Each test runs the script's ``main`` in-process with ``--out-dir`` in a temporary folder and
checks that it printed its figures and wrote its JSON (and plot). The figures themselves are
not checked: at smoke sizes they mean nothing. Scripts that load the real model are marked
``model``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.benchmarks._bench import BENCHMARKS, SHARED_DATA, bench_module, go_offline

needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "sst2" / "train.tsv").is_file()
    or not (SHARED_DATA / "agnews" / "train.tsv").is_file(),
    reason=f"the benchmark data is not at {SHARED_DATA}",
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    go_offline(monkeypatch)
    monkeypatch.delenv("BBT_BASE_URL", raising=False)


def _run(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    mod = bench_module(name)
    code = mod.main(["--smoke", "--out-dir", str(tmp_path), *extra])
    assert code == 0
    return capsys.readouterr().out


def _json(path: Path) -> dict[str, Any]:
    assert path.is_file(), f"{path} was not written"
    data: dict[str, Any] = json.loads(path.read_text())
    assert data["command"]
    assert data["machine"]["cpus"]
    return data


def test_wire_bytes_prints_paper_scale_bodies(capsys: pytest.CaptureFixture[str]) -> None:
    bench_module("wire_bytes").main()
    out = capsys.readouterr().out
    assert "| float32 |" in out
    assert "| float16 |" in out


@needs_shared_data
def test_wire_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("wire_cost", tmp_path, capsys)
    assert "| vLLM prompt_embeds | bfloat16 |" in out
    assert "| bbt protocol v1 | float16 |" in out
    data = _json(tmp_path / "wire_cost_smoke.json")
    assert {r["encoding"] for r in data["rows"]} == {"float32", "float16", "bfloat16"}
    assert all(r["up"] > 0 and r["down"] > 0 for r in data["rows"])


def test_reference_losses_match_their_definitions() -> None:
    import numpy as np

    ref = bench_module("reference_bbt")
    logits = np.array([[2.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 0])
    # CE: mean of -log softmax at the gold class.
    expected = float(np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))]))
    assert ref.ce_loss(logits, y) == pytest.approx(expected)
    # Hinge, margin 2: max(0, 0 - 2 + 2) = 0 and max(0, 1 - 0 + 2) = 3, over 2 examples.
    assert ref.hinge_loss(logits, y) == pytest.approx(1.5)


def test_reference_losses_are_the_tuners() -> None:
    """One definition of each loss: the reference loop scores a candidate exactly as the
    tuner does (the loop itself stays independent)."""
    import numpy as np

    from bbt.tuner import cross_entropy, hinge

    ref = bench_module("reference_bbt")
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 4)).astype(np.float32) * 3
    y = np.array([0, 1, 2, 3, 3, 1])
    assert ref.hinge_loss(logits, y) == hinge(logits[None], y)[0]
    assert ref.ce_loss(logits, y) == cross_entropy(logits[None], y)[0]


@needs_shared_data
@pytest.mark.model
def test_parity(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("parity", tmp_path, capsys)
    assert "| API calls | reference held-out" in out
    assert "[reference" in out
    assert "[bbt" in out
    data = _json(tmp_path / "parity_smoke.json")
    assert {r["impl"] for r in data["runs"]} == {"reference", "bbt"}
    # Same budget accounting: both spent the same training calls.
    calls = {r["impl"]: r["calls"] for r in data["runs"]}
    assert calls["reference"] == calls["bbt"] == data["checkpoints"][-1]
    assert (tmp_path / "parity_smoke.png").stat().st_size > 0


@needs_shared_data
@pytest.mark.model
def test_throughput_scaling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("throughput_scaling", tmp_path, capsys)
    assert "B sweep" in out
    assert "n sweep" in out
    data = _json(tmp_path / "throughput_scaling_smoke.json")
    assert all(r["batched_seq_per_s"] > 0 for r in data["by_batch"] + data["by_n"])
    assert (tmp_path / "throughput_scaling_smoke.png").stat().st_size > 0


@needs_shared_data
@pytest.mark.model
def test_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("end_to_end", tmp_path, capsys)
    assert "| agnews |" in out
    data = _json(tmp_path / "end_to_end_smoke.json")
    (run,) = data["runs"]
    assert run["calls"] > 0
    assert run["wall_seconds"] > 0
    assert run["stop_reason"] in ("early_stopping", "budget")


def _script(name: str, *args: str) -> str:
    """Run a benchmark that parses ``sys.argv`` in a subprocess; return its stdout."""
    import subprocess

    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"{name}.py"), "--smoke", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_client_overhead(tmp_path: Path) -> None:
    out = _script("client_overhead", "--out", str(tmp_path / "co.json"))
    assert "ratio" in out.lower()
    data = json.loads((tmp_path / "co.json").read_text())
    assert data["overhead_to_matmul_ratio"] > 0
    assert set(data["ms_per_generation"]) >= {"projection", "encoding", "transport", "loss"}


def test_mock_latency() -> None:
    out = _script("mock_latency")
    assert "MockBackend.logits: median" in out
    assert "whole request in-process" in out


def test_fault_run() -> None:
    out = _script("fault_run")
    assert "logits calls completed: 3/3" in out
    assert "identical=True" in out


@needs_shared_data
@pytest.mark.model
def test_server_throughput(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("server_throughput", tmp_path, capsys)
    assert "sequences/s" in out
    data = _json_plain(tmp_path / "throughput_bfloat16_smoke.json")
    assert data["results"]["population"]["sequences_per_second"] > 0


@needs_shared_data
@pytest.mark.model
def test_embedded_quality(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("embedded_quality", tmp_path, capsys, "--task", "agnews")
    assert "| agnews |" in out
    data = _json(tmp_path / "quality_agnews_smoke.json")
    assert data["loop"] == "bbt.Tuner"
    assert data["machine"]["cpu_flags"] is not None
    assert data["backend"]["compute_dtype"] == data["args"]["dtype"]
    (run,) = data["runs"]
    # 2 generations of 4, dev checks after each: p0 + a best and a mean per check at most.
    assert run["bbt_calls"] == 8
    assert run["bbt_dev_calls"] == len(run["dev_log"]) <= 5
    assert run["bbt_dev_calls_without_mean"] == run["bbt_dev_calls"] - 2
    assert len(data["heldout_rows"]) == 20
    for key in ("bbt_heldout_with_mean", "bbt_heldout_without_mean", "manual_heldout"):
        assert 0.0 <= data["summary"][key] <= 1.0
    assert main_report(tmp_path / "quality_agnews_smoke.json", capsys).count("| agnews |") == 1


def main_report(path: Path, capsys: pytest.CaptureFixture[str]) -> str:
    assert bench_module("embedded_quality").main(["--report", str(path)]) == 0
    return capsys.readouterr().out


def _json_plain(path: Path) -> dict[str, Any]:
    assert path.is_file(), f"{path} was not written"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


@pytest.mark.model
def test_tokenizer_cache_memory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = _run("tokenizer_cache_memory", tmp_path, capsys)
    assert "| old: 65,536 entries of int tuples |" in out
    assert "| new: 64 MiB |" in out
    data = _json(tmp_path / "tokenizer_cache_memory_smoke.json")
    rows = {(r["variant"], r["texts"]): r for r in data["rows"]}
    assert rows[("new", 60)]["entries"] == 60
    # The same texts cost the new cache several times less (compact ids, same keys).
    assert rows[("new", 60)]["cache_mib"] * 3 < rows[("old", 60)]["cache_mib"]


def test_cpu_ceiling(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = bench_module("cpu_ceiling")
    out_json = tmp_path / "ceiling.json"
    assert mod.main(["--repeats", "2", "--budget", "40", "--json", str(out_json)]) == 0
    printed = capsys.readouterr().out
    assert "floor for the tuning alone" in printed
    data = json.loads(out_json.read_text())
    # The demo's 16-shot AG News train set: 64 sequences per call, each longer than the prompt.
    assert data["demo"]["train_sequences_per_call"] == 64
    assert data["demo"]["mean_tokens"] > 10
    assert data["demo"]["sequences"] == 40 * 64
    # The floor is the arithmetic over the measured rate, and the exact savings lower it.
    assert data["floor_seconds"] == pytest.approx(
        data["gflop_total"] / data["sgemm_gflops"], rel=0.01
    )
    assert 0 < data["floor_seconds_with_exact_savings"] < data["floor_seconds"]
