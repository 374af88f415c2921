"""The load, fuzz and secrets checks of the reliability campaign, in ``--smoke`` mode.

Each runs the script's ``main`` in-process (its servers and ``bbt tune`` clients are child
processes on loopback ports) and checks what the campaign promises at smoke size: every
client finishes, no 5xx, no canary anywhere. The helpers they rely on (the canary's
encodings, the scanner, the schema walk) are tested directly too, since a scanner that
finds nothing would pass any scan.
"""

from __future__ import annotations

import base64
import importlib
import json
import sys
import urllib.parse
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(autouse=True)
def _path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))


def _module(name: str) -> ModuleType:
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module(name)


def _smoke(name: str, tmp_path: Path, result: str, *args: str) -> dict[str, Any]:
    code = _module(name).main(["--smoke", "--out-dir", str(tmp_path), *args])
    path = tmp_path / f"{result}.json"
    assert path.is_file(), f"{path} was not written"
    data: dict[str, Any] = json.loads(path.read_text())
    assert data["command"]
    assert data["machine"]["cpus"]
    assert data["commit"]
    assert code == 0, json.dumps(data)[:4000]
    return data


def test_load_smoke(tmp_path: Path) -> None:
    data = _smoke("load", tmp_path, "load_smoke")
    (sc,) = data["scenarios"]
    assert sc["clients"] == 2
    assert sc["all_completed"]
    assert sc["server_healthy_after"]
    for client in sc["per_client"]:
        assert client["exit"] == 0
        assert client["result_present"]
        # Every client's requests reached the server under its own request-id prefix.
        assert client["server_share"] > 0
    assert sum(c["server_share"] for c in sc["per_client"]) == pytest.approx(1, abs=0.01)
    assert sc["latency_logits_ms_client"]["p50"] > 0
    assert sc["server_peak_rss_mib"] > 0
    assert "available" in data["queue_bound"]


def test_fuzz_smoke(tmp_path: Path) -> None:
    data = _smoke("fuzz_openapi", tmp_path, "fuzz_smoke")
    (target,) = data["targets"]
    live = target["live"]
    assert live["requests"] >= 100
    assert live["responses_5xx"] == 0
    assert live["transport_errors"] == 0
    assert target["healthz_at_end"]
    assert target["server_alive_same_process"]
    # The fuzzer reached both the backend (200) and the validation paths (4xx).
    assert "200" in live["statuses"]
    assert any(s.startswith("4") for s in live["statuses"])
    assert target["inprocess"]["requests"] == live["requests"]


def test_fuzz_registry_sessions_smoke(tmp_path: Path) -> None:
    # The stateful families against a live mock server with three keys and small quotas
    # (and the in-process app): a few hundred requests, no 5xx but the documented 503.
    args = ("--families", "registry,sessions", "--requests", "300")
    data = _smoke("fuzz_openapi", tmp_path, "fuzz_registry_sessions_smoke", *args)
    (target,) = data["targets"]
    assert target["families"] == ["registry", "sessions"]
    for tally in (target["live"], target["inprocess"]):
        assert tally["requests"] >= 300
        assert tally["unexpected_5xx"] == 0
        assert tally["oracle_violations"] == 0
        assert set(tally["by_family"]) == {"registry", "sessions"}
        # Past validation (stored prompts, open sessions) and into it (4xx).
        assert "200" in tally["statuses"]
        assert any(s.startswith("4") for s in tally["statuses"])
    assert target["live"]["transport_errors"] == 0
    assert target["healthz_at_end"]
    assert target["server_alive_same_process"]


def test_secrets_smoke(tmp_path: Path) -> None:
    data = _smoke("secrets_scan", tmp_path, "secrets_smoke")
    assert data["scanner_self_check"]
    assert data["hits"] == []
    steps = {s["step"]: s for s in data["steps"]}
    assert steps["tune"]["exit"] == 0
    for name in ("tune_401", "tune_closed_port", "tune_wrong_path", "tune_key_on_argv_401"):
        assert steps[name]["exit"] != 0
        assert steps[name]["error_lines"] == 1
    assert not any(s["traceback"] for s in data["steps"])
    assert data["files_scanned"] > 5


def test_scanner_finds_the_canary_in_every_encoding(tmp_path: Path) -> None:
    mod = _module("secrets_scan")
    canary = mod.new_canary()
    patterns = mod.forms(canary)
    raw = canary.encode()
    leaks = {
        "raw.log": b"Authorization: Bearer " + raw,
        "url.txt": b"?key=" + urllib.parse.quote(canary, safe="").encode(),
        "b64.json": json.dumps({"blob": base64.b64encode(b"xy" + raw + b"tail").decode()}).encode(),
        "b64url.bin": base64.urlsafe_b64encode(b"Bearer " + raw),
    }
    for name, content in leaks.items():
        (tmp_path / name).write_bytes(content)
    (tmp_path / "clean.txt").write_bytes(mod.new_canary().encode())  # another key: no hit
    result = mod.scan_files(mod.walk(tmp_path), patterns, tmp_path)
    assert {h["path"] for h in result["hits"]} == set(leaks)
    assert result["files"] == len(leaks) + 1


def test_schema_walk_draws_valid_requests() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    from bbt.server import MockBackend, ServerSettings
    from bbt.server.app import create_app

    fuzz = _module("fuzz_openapi")
    spec = create_app(MockBackend(), ServerSettings(api_keys=[])).openapi()
    ops = {(o.method, o.path): o for o in fuzz.operations(spec)}
    assert ("POST", "/v1/logits") in ops
    assert ("GET", "/healthz") in ops
    schema = ops[("POST", "/v1/logits")].body_schema
    assert "$ref" not in json.dumps(schema)

    @settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def check(data: st.DataObject) -> None:
        jsonschema.validate(data.draw(fuzz.schema_strategy(schema)), schema)

    check()


def test_access_log_lines_are_attributed() -> None:
    mod = _module("_loadfuzz")
    line = (
        "2026-01-01 00:00:00,000 INFO bbt.server.access POST /v1/logits 200 12.5ms "
        "in=100 out=20 id=c3-17\n"
    )
    (row,) = mod.parse_access_log(line + "unrelated line\n")
    assert row["id"] == "c3-17"
    assert row["ms"] == 12.5
    assert row["status"] == "200"
