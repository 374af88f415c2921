"""Chaos: a `bbt tune` run through 503s, dropped connections, slow answers and server kills.

    python benchmarks/chaos.py            # 40 generations, 2 server kills (about 1-2 min)
    python benchmarks/chaos.py --smoke    # 5 generations, 1 kill (seconds), for the test suite

Two `bbt tune` subprocesses (task mock, n=10, d=100, popsize 20, budget 800, dev every 100
calls) run against `bbt mock-server` subprocesses on loopback ports:

1. fault-free: a server with no faults;
2. chaos: a server injecting 30% 503s, 10% dropped connections and 5% slow answers that
   outlast the client's read timeout (BBT_TIMEOUT=2 s, answers delayed 3 s), killed with
   SIGKILL twice mid-run and restarted on the same port after a short downtime.

The client's own retries must carry the chaos run through; if it dies anyway it is resumed
with `bbt tune --resume` (counted). Its z.npy, prompt.npy, history (minus wall times) and
recorded result must then be bitwise identical to the fault-free run's. Prints a JSON summary
(requests, retries, wall time of both runs, server restarts, resumes, faults the servers
logged), writes benchmarks/results/chaos.json, and exits 1 if the runs differ or the chaos
run did not complete.

``--api-key-env VAR`` serves and sends the key held in $VAR (a canary for a secrets scan);
``--keep DIR`` keeps run directories and every log there.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _campaign import (
    MockServer,
    Proc,
    add_output_flags,
    add_run_flags,
    bbt_argv,
    child_env,
    differences,
    fingerprint,
    history_lines,
    read_manifest,
    status_counts,
    write_result,
)

POLL_S = 0.01


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    add_run_flags(p, budget=800, dim=100, seed=3)
    p.add_argument("--rate-503", type=float, default=0.30)
    p.add_argument("--rate-drop", type=float, default=0.10)
    p.add_argument("--rate-slow", type=float, default=0.05, help="answers delayed --slow-s")
    p.add_argument("--slow-s", type=float, default=3.0, help="delay of a slow answer (s)")
    p.add_argument("--timeout", type=float, default=2.0, help="client BBT_TIMEOUT (s)")
    p.add_argument("--max-retries", type=int, default=30, help="client BBT_MAX_RETRIES")
    p.add_argument("--max-retry-wait", type=float, default=1.0, help="BBT_MAX_RETRY_WAIT (s)")
    p.add_argument("--kills", type=int, default=2, help="SIGKILLs of the server mid-run")
    p.add_argument("--downtime", type=float, default=1.0, help="s between kill and restart")
    p.add_argument("--fault-seed", type=int, default=0)
    p.add_argument("--max-resumes", type=int, default=3)
    p.add_argument("--api-key-env", default=None, help="serve and send the key in $VAR")
    add_output_flags(p, time_limit=900.0, smoke_help="5 generations, 1 kill, low rates")
    args = p.parse_args(argv)
    if args.smoke:
        args.budget, args.eval_every, args.kills = 100, 40, 1
        args.rate_503, args.rate_drop, args.rate_slow = 0.10, 0.05, 0.02
        args.slow_s, args.timeout, args.time_limit = 1.5, 1.0, 600.0
    if args.rate_slow and args.slow_s <= args.timeout:
        p.error("--slow-s must exceed --timeout: slow answers are meant to time out")
    return args


def _tune_args(args: argparse.Namespace, out: Path) -> list[str]:
    return [
        "tune",
        "--task",
        "mock",
        "-n",
        str(args.n_tokens),
        "-d",
        str(args.dim),
        "--popsize",
        str(args.popsize),
        "--budget",
        str(args.budget),
        "--eval-every",
        str(args.eval_every),
        "--seed",
        str(args.seed),
        "--no-plot",
        "-q",
        "--out",
        str(out),
    ]


class Clock:
    def __init__(self, limit_s: float) -> None:
        self.deadline = time.monotonic() + limit_s

    def left(self) -> float:
        return self.deadline - time.monotonic()


def _drive(
    args: argparse.Namespace,
    work: Path,
    name: str,
    server: MockServer,
    env: dict[str, str],
    kills: int,
    clock: Clock,
) -> dict[str, Any]:
    """Run `bbt tune` to completion against ``server``, killing and restarting the server
    ``kills`` times mid-run, resuming the run if it dies (at most --max-resumes times)."""
    run_dir = work / name
    generations = args.budget // args.popsize
    kill_at = [max(1, round(generations * (i + 1) / (kills + 1))) for i in range(kills)]
    events: list[dict[str, Any]] = []
    attempts: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    argv = bbt_argv(*_tune_args(args, run_dir))
    while True:
        log = work / f"{name}-tune-{len(attempts)}.log"
        proc = Proc(argv, env, work, log)
        try:
            while proc.running():
                if clock.left() < 0:
                    raise TimeoutError(f"{name}: time limit reached")
                if kill_at and history_lines(run_dir) >= kill_at[0]:
                    gen = kill_at.pop(0)
                    mid_run = proc.running()
                    t_kill = time.perf_counter()
                    server.kill9()
                    time.sleep(args.downtime)
                    start_s = server.start()
                    events.append(
                        {
                            "after_generation": gen,
                            "tune_running_at_kill": mid_run,
                            "down_s": round(time.perf_counter() - t_kill, 3),
                            "restart_s": round(start_s, 3),
                        }
                    )
                time.sleep(POLL_S)
            rc = proc.popen.returncode
        finally:
            proc.close()
        attempts.append({"exit": rc, "log_tail": "" if rc == 0 else proc.tail(800)})
        if rc == 0:
            break
        resumes = len(attempts) - 1
        if resumes >= args.max_resumes or not (run_dir / "manifest.json").exists():
            break
        argv = bbt_argv("tune", "--resume", str(run_dir), "--no-plot", "-q")
    wall = time.perf_counter() - t0
    manifest = read_manifest(run_dir) if (run_dir / "manifest.json").exists() else {}
    usage = manifest.get("usage", {})
    retry_causes: dict[str, int] = {}
    for i in range(len(attempts)):
        for line in (work / f"{name}-tune-{i}.log").read_text(errors="replace").splitlines():
            if "retrying" in line and " after " in line:
                cause = line.split(" after ", 1)[1].split(" ", 1)[0]
                retry_causes[cause] = retry_causes.get(cause, 0) + 1
    accesses = [a for a in server.accesses() if a.path.startswith("/v1")]
    return {
        "completed": manifest.get("status") == "completed",
        "generations": (manifest.get("result") or {}).get("generations"),
        "wall_s": round(wall, 2),
        "requests": usage.get("requests"),
        "retries": usage.get("retries"),
        "calls": usage.get("calls"),
        "retry_causes_logged": dict(sorted(retry_causes.items())),
        "attempts": len(attempts),
        "resumes": len(attempts) - 1,
        "exit_codes": [a["exit"] for a in attempts],
        "failures": [a["log_tail"] for a in attempts if a["exit"] != 0],
        "server_incarnations": len(server.logs),
        "server_restarts": len(events),
        "server_kills": events,
        "server_requests_logged": len(accesses),
        "server_outcomes": status_counts(accesses),
        # Slow answers the server still computed and sent after the client had given up
        # (its read timeout is shorter than the delay): work done for nobody.
        "slow_answers_computed_after_client_left": sum(
            a.fault == "timeout" and a.status == "200" and a.bytes_out > 0 for a in accesses
        ),
        "fingerprint": fingerprint(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    clock = Clock(args.time_limit)
    key = os.environ.get(args.api_key_env, "") if args.api_key_env else ""
    if args.api_key_env and not key:
        print(f"error: ${args.api_key_env} is empty or unset", file=sys.stderr)
        return 2
    faults = [
        "--rate-503",
        str(args.rate_503),
        "--rate-drop",
        str(args.rate_drop),
        "--rate-timeout",
        str(args.rate_slow),
        "--timeout-s",
        str(args.slow_s),
    ]
    work = Path(tempfile.mkdtemp(prefix="bbt-chaos-"))
    servers: list[MockServer] = []
    try:
        server_env = child_env(work, **({"BBT_SERVER_API_KEYS": key} if key else {}))
        clean = MockServer(work, "server-clean", [], server_env, args.fault_seed)
        chaos = MockServer(work, "server-chaos", faults, server_env, args.fault_seed)
        servers += [clean, chaos]
        for s in servers:  # both start at once: a server takes seconds to import
            s.launch()
        for s in servers:
            s.wait_ready()
        runs: dict[str, dict[str, Any]] = {}
        for name, server, kills in (("fault_free", clean, 0), ("chaos", chaos, args.kills)):
            env = child_env(
                work,
                BBT_BASE_URL=server.url,
                BBT_TIMEOUT=str(args.timeout),
                # A fixed read timeout: the slow answers must outlast it (by default a logits
                # request's read timeout grows with its size, see docs/client.md).
                BBT_TIMEOUT_PER_SEQUENCE="0",
                BBT_MAX_RETRIES=str(args.max_retries),
                BBT_MAX_RETRY_WAIT=str(args.max_retry_wait),
                **({"BBT_API_KEY": key} if key else {}),
            )
            try:
                runs[name] = _drive(args, work, name, server, env, kills, clock)
            except (TimeoutError, RuntimeError, OSError) as exc:
                # Reported, not raised: the summary says what stopped the check.
                runs[name] = {"completed": False, "error": f"{type(exc).__name__}: {exc}"}
                runs[name]["fingerprint"] = fingerprint(work / name)
            server.close()
        diff = differences(runs["fault_free"]["fingerprint"], runs["chaos"]["fingerprint"])
        both = runs["fault_free"]["completed"] and runs["chaos"]["completed"]
        ok = both and not diff
        summary = {
            "check": "chaos",
            "ok": ok,
            "identical": not diff,
            "differences": diff,
            "config": {
                "task": "mock",
                "n_tokens": args.n_tokens,
                "dim": args.dim,
                "popsize": args.popsize,
                "budget": args.budget,
                "eval_every": args.eval_every,
                "seed": args.seed,
                "faults": {
                    "rate_503": args.rate_503,
                    "rate_drop": args.rate_drop,
                    "rate_slow": args.rate_slow,
                    "slow_s": args.slow_s,
                    "fault_seed": args.fault_seed,
                },
                "client": {
                    "BBT_TIMEOUT": args.timeout,
                    "BBT_TIMEOUT_PER_SEQUENCE": 0.0,
                    "BBT_MAX_RETRIES": args.max_retries,
                    "BBT_MAX_RETRY_WAIT": args.max_retry_wait,
                },
                "server_kills": args.kills,
                "downtime_s": args.downtime,
                "api_key": "from $" + args.api_key_env if args.api_key_env else None,
            },
            "runs": runs,
        }
        print(json.dumps(summary, indent=1))
        name = "chaos_smoke.json" if args.smoke else "chaos.json"
        write_result(args.out_dir / name, summary, sys.argv if argv is None else [__file__, *argv])
        return 0 if ok else 1
    finally:
        for s in servers:
            s.close()
        if args.keep is not None:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
