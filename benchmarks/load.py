"""Load: concurrent ``bbt tune`` clients against one server; fairness, memory, latency.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/load.py [--smoke] [--out-dir DIR]

Scenarios (full mode), each with a fresh server so its peak RSS belongs to that scenario:

- ``mock_1`` / ``mock_8``: ``bbt mock-server --latency-ms 50`` with 1, then 8 concurrent
  ``bbt tune --task mock --budget 400`` clients.
- ``serve_1`` / ``serve_8``: ``bbt serve`` (the embedded MiniLM, bfloat16, 2 threads) with
  1, then 8 clients of a small run (n=5, d=50, popsize 10, 4-shot, budget 100).
- ``queue_8``: ``bbt serve`` as above with the server's queue bound set small, so clients
  meet 503 + Retry-After; checked only when the server has such a setting (it is looked up
  on ``ServerSettings``), else reported as not available on this commit.

Each client is ``bbt tune`` in its own process (``_loadfuzz.py tune-client``), tagging its
requests with ``X-Request-ID: cK-<n>``, which the server logs. Reported per scenario: every
client's exit status and result; each client's share of server time (the sum of its
requests' durations in the server's access log, arrival to last byte, queueing included)
and of the logits requests served while all clients were running; Jain's fairness index of
the shares; p50/p99 latency of logits requests, client-side and server-side; the server's
peak RSS (VmHWM). Writes ``results/load.json`` (``load_smoke.json`` with ``--smoke``:
``mock_2``, 2 clients of a tiny run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import RESULTS, write_result
from _loadfuzz import (
    ROOT,
    ServerProc,
    child_env,
    cpu_flags,
    git_commit,
    parse_access_log,
    percentiles,
    stop_group,
)

LOGITS = "/v1/logits"


def _is_logits(path: str) -> bool:
    """A logits request: full prompts, or z through a projection session (protocol 1.1)."""
    return path == LOGITS or (path.startswith("/v1/sessions/") and path.endswith("/logits"))


MOCK_TUNE = ["--task", "mock", "--budget", "400", "--eval-every", "100"]
SERVE_TUNE = [
    "--task", "mock", "--budget", "100", "--popsize", "10", "--n-tokens", "5", "--dim", "50",
    "--k-shot", "4", "--eval-every", "50",
]  # fmt: skip
SMOKE_TUNE = [
    "--task", "mock", "--budget", "30", "--popsize", "10", "--n-tokens", "5", "--dim", "50",
    "--k-shot", "4", "--eval-every", "20",
]  # fmt: skip
SERVE_ARGS = ["--dtype", "bfloat16", "--threads", "2"]
MOCK_ARGS = ["--latency-ms", "50"]
CLIENT_TIMEOUT_S = 900.0


@dataclass
class Scenario:
    name: str
    server: str  # "mock-server" or "serve"
    server_args: list[str]
    clients: int
    tune: list[str]
    server_env: dict[str, str] = field(default_factory=dict)


def queue_setting() -> str | None:
    """The server's queue-bound setting (a ServerSettings field), if this commit has one."""
    from bbt.server.settings import ServerSettings

    names = [n for n in ServerSettings.model_fields if "queue" in n]
    return names[0] if names else None


def run_scenario(sc: Scenario, work: Path) -> dict[str, Any]:
    base = work / sc.name
    base.mkdir(parents=True, exist_ok=True)
    procs: list[tuple[str, subprocess.Popen[bytes], Path, Path]] = []
    started = time.time()
    with ServerProc(sc.server, sc.server_args, base / "server.log", env=sc.server_env) as srv:
        rss_idle = srv.memory_kib()
        try:
            for k in range(sc.clients):
                tag = f"c{k}"
                out = base / f"run-{tag}"
                log = base / f"{tag}.requests.jsonl"
                argv = [
                    sys.executable,
                    str(ROOT / "benchmarks" / "_loadfuzz.py"),
                    "tune-client",
                    tag,
                    str(log),
                    "--",
                    "tune",
                    *sc.tune,
                    "--base-url",
                    srv.base_url,
                    "--out",
                    str(out),
                    "--no-plot",
                    "--quiet",
                ]
                with (base / f"{tag}.stderr").open("wb") as err:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=err,
                        stderr=subprocess.STDOUT,
                        env=child_env(),
                        cwd=base,
                        start_new_session=True,
                    )
                procs.append((tag, proc, out, log))
            deadline = time.monotonic() + CLIENT_TIMEOUT_S
            for _, proc, _, _ in procs:
                try:
                    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    stop_group(proc)
            mem = srv.memory_kib()
            healthy = srv.healthy()
        finally:
            for _, proc, _, _ in procs:
                stop_group(proc)
    wall = time.time() - started
    access = parse_access_log((base / "server.log").read_text(errors="replace"))
    return summarise(sc, procs, access, mem, rss_idle, healthy, wall)


def summarise(
    sc: Scenario,
    procs: list[tuple[str, subprocess.Popen[bytes], Path, Path]],
    access: list[dict[str, Any]],
    mem: dict[str, int],
    rss_idle: dict[str, int],
    healthy: bool,
    wall: float,
) -> dict[str, Any]:
    server_ms: dict[str, float] = defaultdict(float)
    server_logits_ms: list[float] = []
    for row in access:
        tag = row["id"].split("-", 1)[0]
        server_ms[tag] += row["ms"]
        if _is_logits(row["path"]) and row["status"] == "200":
            server_logits_ms.append(row["ms"])
    total_ms = sum(server_ms[t] for t, *_ in procs) or 1.0

    clients: list[dict[str, Any]] = []
    records: dict[str, list[dict[str, Any]]] = {}
    for tag, proc, out, log in procs:
        recs = [json.loads(x) for x in log.read_text().splitlines()] if log.is_file() else []
        records[tag] = recs
        done = (out / "prompt.npy").is_file() and (out / "z.npy").is_file()
        statuses: dict[str, int] = defaultdict(int)
        for r in recs:
            statuses[str(r.get("status", r.get("error")))] += 1
        times = [r["start"] for r in recs] + [r["start"] + r["ms"] / 1000 for r in recs]
        clients.append(
            {
                "client": tag,
                "exit": proc.returncode,
                "result_present": done,
                "http_attempts": len(recs),
                "statuses": dict(statuses),
                "retry_after_values": sorted(
                    {r["retry_after"] for r in recs if r.get("retry_after")}
                ),
                "server_ms": round(server_ms[tag], 1),
                "server_share": round(server_ms[tag] / total_ms, 4),
                "active_s": round(max(times) - min(times), 2) if times else 0.0,
            }
        )
    # Requests served while every client was running: who got how much of the server then.
    spans = [
        (min(r["start"] for r in recs), max(r["start"] + r["ms"] / 1000 for r in recs))
        for recs in records.values()
        if recs
    ]
    window = (max(s for s, _ in spans), min(e for _, e in spans)) if spans else (0.0, 0.0)
    in_window: dict[str, int] = defaultdict(int)
    for tag, recs in records.items():
        for r in recs:
            end = r["start"] + r["ms"] / 1000
            ok = r.get("status") == 200 and window[0] <= end <= window[1]
            if _is_logits(r["path"]) and ok:
                in_window[tag] += 1
    n_window = sum(in_window.values())
    for c in clients:
        c["logits_in_common_window"] = in_window[c["client"]]
        c["window_share"] = round(in_window[c["client"]] / n_window, 4) if n_window else None
    client_logits_ms = [r["ms"] for recs in records.values() for r in recs if _is_logits(r["path"])]
    shares = [c["server_share"] for c in clients]
    jain = sum(shares) ** 2 / (len(shares) * sum(s * s for s in shares)) if any(shares) else None
    codes = [int(r["status"]) for r in access if r["status"].isdigit()]
    return {
        "scenario": sc.name,
        "server": ["bbt", sc.server, *sc.server_args],
        "server_env": sorted(sc.server_env),
        "tune_args": sc.tune,
        "clients": len(procs),
        "all_completed": all(c["exit"] == 0 and c["result_present"] for c in clients),
        "server_healthy_after": healthy,
        "wall_s": round(wall, 1),
        "server_rss_idle_mib": round(rss_idle.get("VmRSS", 0) / 1024, 1),
        "server_peak_rss_mib": round(mem.get("VmHWM", 0) / 1024, 1),
        "server_requests": len(access),
        "server_503": sum(1 for c in codes if c == 503),
        "server_5xx_other": sum(1 for c in codes if c >= 500 and c != 503),
        "jain_fairness_server_time": round(jain, 4) if jain is not None else None,
        "common_window_s": round(max(0.0, window[1] - window[0]), 2),
        "latency_logits_ms_client": percentiles(client_logits_ms),
        "latency_logits_ms_server": percentiles(server_logits_ms),
        "per_client": clients,
    }


def print_scenario(r: dict[str, Any]) -> None:
    print(
        f"\n## {r['scenario']}: {r['clients']} client(s) vs bbt {r['server'][1]}"
        f" - all completed: {r['all_completed']}, wall {r['wall_s']}s, "
        f"server peak RSS {r['server_peak_rss_mib']} MiB, "
        f"logits latency client p50 {r['latency_logits_ms_client']['p50']} ms / "
        f"p99 {r['latency_logits_ms_client']['p99']} ms "
        f"(server p50 {r['latency_logits_ms_server']['p50']} / "
        f"p99 {r['latency_logits_ms_server']['p99']}), 503s {r['server_503']}, "
        f"Jain {r['jain_fairness_server_time']}"
    )
    print("| client | exit | result | attempts | statuses | server share | window share |")
    print("|---|---|---|---|---|---|---|")
    for c in r["per_client"]:
        print(
            f"| {c['client']} | {c['exit']} | {c['result_present']} | {c['http_attempts']} | "
            f"{c['statuses']} | {c['server_share']:.3f} | {c['window_share']} |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="2 clients, mock, tiny budget")
    ap.add_argument("--out-dir", type=Path, default=None, help="where to write the JSON")
    ap.add_argument("--work", type=Path, default=None, help="run dirs and logs (default: temp)")
    ap.add_argument("--skip", action="append", default=[], help="scenario names to skip")
    args = ap.parse_args(argv)

    import tempfile

    qname = queue_setting()
    commit = git_commit()  # the commit this run starts on
    if args.smoke:
        scenarios = [Scenario("mock_2", "mock-server", MOCK_ARGS, 2, SMOKE_TUNE)]
    else:
        scenarios = [
            Scenario("mock_1", "mock-server", MOCK_ARGS, 1, MOCK_TUNE),
            Scenario("mock_8", "mock-server", MOCK_ARGS, 8, MOCK_TUNE),
            Scenario("serve_1", "serve", SERVE_ARGS, 1, SERVE_TUNE),
            Scenario("serve_8", "serve", SERVE_ARGS, 8, SERVE_TUNE),
        ]
        if qname is not None:
            env = {f"BBT_SERVER_{qname.upper()}": "2"}
            scenarios.append(Scenario("queue_8", "serve", SERVE_ARGS, 8, SERVE_TUNE, env))
    scenarios = [s for s in scenarios if s.name not in args.skip]

    results = []
    with tempfile.TemporaryDirectory(prefix="bbt-load-") as tmp:
        work = args.work or Path(tmp)
        for sc in scenarios:
            print(f"running {sc.name} ...", flush=True)
            r = run_scenario(sc, work)
            print_scenario(r)
            results.append(r)
    queue: dict[str, Any]
    if qname is None:
        queue = {
            "available": False,
            "note": "not available on this commit: bbt.server.settings.ServerSettings has no "
            "queue-bound setting",
        }
    elif args.smoke:
        queue = {"available": True, "setting": qname, "note": "not run in smoke mode"}
    else:
        q = next((r for r in results if r["scenario"] == "queue_8"), None)
        queue = {
            "available": True,
            "setting": f"BBT_SERVER_{qname.upper()}=2",
            "ran": q is not None,
            "clients_met_503": sum(1 for c in q["per_client"] if c["statuses"].get("503"))
            if q
            else None,
            "all_completed": q["all_completed"] if q else None,
        }
    print(f"\nqueue bound: {json.dumps(queue)}")
    write_result(
        "load_smoke" if args.smoke else "load",
        {
            "commit": commit,
            "cpu_flags": cpu_flags(),
            "scenarios": results,
            "queue_bound": queue,
        },
        args.out_dir or RESULTS,
    )
    ok = all(r["all_completed"] and r["server_healthy_after"] for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
