"""The BBTv2 benchmarks in ``--smoke`` mode, and the reference BBTv2 loop on the mock."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.benchmarks._bench import SHARED_DATA, bench_module, go_offline

needs_shared_data = pytest.mark.skipif(
    not (SHARED_DATA / "agnews" / "train.tsv").is_file(),
    reason=f"the benchmark data is not at {SHARED_DATA}",
)


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    go_offline(monkeypatch)


def _json(path: Path) -> dict[str, Any]:
    assert path.is_file(), f"{path} was not written"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def test_reference_loop_runs_layers_in_turn_on_the_mock() -> None:
    from bbt.server import MockBackend
    from bbt.server.mock import MOCK_TEMPLATE, MOCK_VERBALIZER, sample_mock_dataset

    ref_mod = bench_module("reference_bbtv2")
    backend = MockBackend(hidden_size=16, seed=0, num_layers=3)
    rows = sample_mock_dataset(24, 0)
    texts = [MOCK_TEMPLATE.format(text=t, mask="[MASK]") for t, _ in rows]
    y = np.array([label for _, label in rows])
    ids, _ = backend.tokenize(list(MOCK_VERBALIZER))
    cand = np.array([i[0] for i in ids])
    ref = ref_mod.ReferenceBBTv2(
        backend,
        texts[:12],
        y[:12],
        texts[12:],
        y[12:],
        cand,
        n_tokens=2,
        dim=6,
        popsize=4,
        budget=30,  # 2 whole rounds of 3 layers x 4 candidates; the rest is never spent
        eval_every=8,
        seed=1,
    )
    # The mock has no encoder to measure: its advertised statistics stand in.
    assert ref.layer_std[1:] == backend.info.layer_std[1:]
    res = ref.run()
    assert res.calls == 24
    assert [h["layer"] for h in res.history] == [0, 1, 2, 0, 1, 2]
    assert res.dev_calls == 3
    assert res.best_prompt is not None
    assert res.best_prompt.shape == (3, 2, 16)
    # Every layer ends held at a non-zero prompt (its CMA-ES's best).
    assert all(np.abs(ref.best_prefix[k]).max() > 0 for k in range(3))


@needs_shared_data
@pytest.mark.model
def test_parity_bbtv2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_module("parity_bbtv2").main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| API calls | reference held-out" in out
    data = _json(tmp_path / "parity_bbtv2_smoke.json")
    assert {r["impl"] for r in data["runs"]} == {"reference", "bbt"}
    calls = {r["impl"]: r["calls"] for r in data["runs"]}
    assert calls["reference"] == calls["bbt"] == data["checkpoints"][-1]
    assert (tmp_path / "parity_bbtv2_smoke.png").stat().st_size > 0


@needs_shared_data
@pytest.mark.model
def test_bbtv2_vs_bbt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--smoke", "--out-dir", str(tmp_path), "--task", "agnews"]
    assert bench_module("bbtv2_vs_bbt").main(args) == 0
    out = capsys.readouterr().out
    assert "BBTv2 - BBT:" in out
    data = _json(tmp_path / "bbtv2_vs_bbt_agnews_smoke.json")
    runs = {r["method"]: r for r in data["runs"]}
    assert runs["bbt"]["calls"] == runs["bbtv2"]["calls"] == 24
    assert runs["bbtv2"]["layers"] == [0, 1, 2, 3, 4, 5]
    assert set(runs["bbt"]["layers"]) == {None}
    # A deep prompt carries L = 6 slices: several times the bytes of a shallow one.
    wire = data["summary"]
    assert (
        wire["bbtv2"]["bytes_per_candidate"]["float32"]
        > wire["bbt"]["bytes_per_candidate"]["float32"]
    )


@needs_shared_data
@pytest.mark.model
def test_bbtv2_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_module("bbtv2_cost").main(["--smoke", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "deep / shallow server time per generation" in out
    data = _json(tmp_path / "bbtv2_cost_smoke.json")
    assert data["ratio_deep_over_shallow"] > 0
    session = data["session_bytes_per_candidate"]
    assert session["bbtv2_all_layers_z"] > session["bbtv2_active_layer_z"]
    measured = data["measured_bytes"]  # the client's usage counters, per candidate
    v2_sess = measured["bbtv2 sessions=on"]["per_candidate"]
    assert v2_sess < measured["bbtv2 sessions=off"]["per_candidate"]
    assert (
        measured["bbt sessions=on"]["per_candidate"] < measured["bbt sessions=off"]["per_candidate"]
    )
