"""Crash at any point: SIGKILL `bbt tune` mid-request, mid-checkpoint and mid-dev-scoring.

    python benchmarks/crash_points.py            # 10 kills (a few minutes)
    python benchmarks/crash_points.py --smoke    # 2 kills (a checkpoint write, dev scoring)

One `bbt mock-server` (loopback, every answer delayed --latency-ms so a request is a wide
target) serves every `bbt tune` subprocess (task mock, n=10, d=500, popsize 20, budget 400,
dev every 100 calls; d=500 makes the checkpoint ~4 MB, so its write is a target too).

1. An uninterrupted run gives the reference artifacts and its API calls, counted by the
   server from its access log (a population request is `popsize` calls, a dev request 1;
   the count must agree with the run's own manifest).
2. Each of --kills trials starts the same run afresh and SIGKILLs it at a random moment of
   a chosen kind: during a training request (a random point of a random generation's
   population request), during a checkpoint write (the moment the atomic write's temp file
   appears after a random generation), or during dev scoring (a random point of a dev
   request after a random dev generation's population request). A request counts as sent
   once the client sleeps in poll (/proc), so the aim holds however long the client thinks
   on a loaded machine. What was hit is then established from evidence, not assumed: the
   server's access log (which request was in flight at the kill's timestamp) and a temp
   file left in the run directory.
3. `bbt tune --resume DIR` runs each trial to completion; z.npy, prompt.npy, history
   (minus wall times) and the recorded result must be bitwise identical to the reference,
   and the calls the server answered for the trial, minus the reference's, are the calls
   spent twice: at most one generation's worth (its population plus its dev evaluation).

Writes benchmarks/results/crash_points.json; exits 1 on any violation, or if a kind of
moment was never hit.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _campaign import (
    Access,
    MockServer,
    Proc,
    add_output_flags,
    add_run_flags,
    bbt_argv,
    child_env,
    differences,
    fingerprint,
    history_lines,
    is_checkpoint_temp,
    read_access_log,
    read_manifest,
    temp_files,
    waits_on_io,
    write_result,
)

KINDS = ("request", "checkpoint", "dev")
#: Clock slack when matching a kill to a logged request (the log has millisecond stamps).
SLACK_S = 0.003


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--kills", type=int, default=10)
    add_run_flags(p, budget=400, dim=500, seed=5)
    p.add_argument("--latency-ms", type=float, default=300.0, help="server delay per request")
    p.add_argument("--rng-seed", type=int, default=0, help="seed of the kill moments")
    add_output_flags(p, time_limit=1500.0, smoke_help="2 kills, 6 generations")
    args = p.parse_args(argv)
    if args.smoke:
        args.kills, args.budget, args.eval_every = 2, 120, 40
        args.latency_ms, args.time_limit = 250.0, 600.0
    if args.budget // args.popsize < 4:
        p.error("need at least 4 generations (--budget / --popsize)")
    return args


class DeadlineError(Exception):
    pass


class Check:
    def __init__(self, args: argparse.Namespace, work: Path, server: MockServer) -> None:
        self.args = args
        self.work = work
        self.server = server
        self.log = server.logs[0]
        self.latency = args.latency_ms / 1000.0
        self.generations = args.budget // args.popsize
        self.deadline = time.monotonic() + args.time_limit
        self.env = child_env(work, BBT_BASE_URL=server.url, BBT_TIMEOUT="60")
        self.dev_split = 0  # body size between a dev request and a population request
        self.gap = {"pop": 0.0, "dev": 0.0}  # median client time between answer and request

    # ------------------------------------------------------------------ helpers

    def _check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise DeadlineError(f"time limit of {self.args.time_limit:.0f} s reached")

    def tune_argv(self, run_dir: Path) -> list[str]:
        a = self.args
        return bbt_argv(
            "tune",
            "--task",
            "mock",
            "-n",
            str(a.n_tokens),
            "-d",
            str(a.dim),
            "--popsize",
            str(a.popsize),
            "--budget",
            str(a.budget),
            "--eval-every",
            str(a.eval_every),
            "--seed",
            str(a.seed),
            "--no-plot",
            "-q",
            "--out",
            str(run_dir),
        )

    def run_to_end(self, argv: list[str], log: Path) -> tuple[int, str]:
        proc = Proc(argv, self.env, self.work, log)
        try:
            while proc.wait(0.1) is None:
                self._check_time()
            return proc.popen.returncode, proc.tail(800)
        finally:
            proc.close()

    def log_size(self) -> int:
        try:
            return self.log.stat().st_size
        except OSError:
            return 0

    def accesses(self, offset: int) -> list[Access]:
        return [a for a in read_access_log(self.log, offset) if a.path.startswith("/v1")]

    def calls(self, accesses: list[Access]) -> int:
        """API calls the server answered: popsize per population request, 1 per dev one."""
        done = [a for a in accesses if a.is_logits and a.status == "200"]
        return sum(self.args.popsize if a.bytes_in > self.dev_split else 1 for a in done)

    def dev_generations(self) -> list[int]:
        pop, every = self.args.popsize, self.args.eval_every
        return [
            k for k in range(2, self.generations) if (k * pop) // every > ((k - 1) * pop) // every
        ]

    # ------------------------------------------------------------------ reference

    def reference(self) -> dict[str, Any]:
        run_dir = self.work / "reference"
        offset = self.log_size()
        t0 = time.perf_counter()
        rc, tail = self.run_to_end(self.tune_argv(run_dir), self.work / "reference.log")
        wall = time.perf_counter() - t0
        if rc != 0:
            raise RuntimeError(f"the uninterrupted run failed ({rc}): {tail}")
        time.sleep(0.2)
        acc = self.accesses(offset)
        sizes = sorted({a.bytes_in for a in acc if a.is_logits and a.status == "200"})
        manifest = read_manifest(run_dir)
        usage = manifest["usage"]
        result = manifest["result"]
        if len(sizes) < 2:
            raise RuntimeError(f"cannot tell dev from population requests by size: {sizes}")
        self.dev_split = (sizes[0] + sizes[-1]) // 2
        # How long the client works between a population answer and its next request (CMA-ES,
        # the checkpoint, encoding): reported, as it shows why a fixed delay cannot aim.
        done = sorted((a for a in acc if a.is_logits and a.status == "200"), key=lambda a: a.end)
        gaps: dict[str, list[float]] = {"pop": [], "dev": []}
        for a, b in itertools.pairwise(done):
            if a.bytes_in > self.dev_split:
                gaps["pop" if b.bytes_in > self.dev_split else "dev"].append(b.start - a.end)
        self.gap = {k: max(0.0, float(np.median(v))) if v else 0.0 for k, v in gaps.items()}
        server_calls = self.calls(acc)
        return {
            "wall_s": round(wall, 2),
            "generations": result["generations"],
            "dev_calls": result["dev_calls"],
            "manifest_calls": usage["calls"],
            "manifest_requests": usage["requests"],
            "server_calls": server_calls,
            "server_requests": len(acc),
            "logits_body_bytes": sizes,
            "client_gap_s": {k: round(v, 4) for k, v in self.gap.items()},
            # The server-side count is only trusted if it agrees with the client's own.
            "counts_agree": server_calls == usage["calls"] and len(acc) == usage["requests"],
            "fingerprint": fingerprint(run_dir),
        }

    # ------------------------------------------------------------------ aiming

    def _wait_lines(self, proc: Proc, run_dir: Path, lines: int, poll: float) -> bool:
        while history_lines(run_dir) < lines:
            if not proc.running():
                return False
            self._check_time()
            time.sleep(poll)
        return True

    def _wait_sent(self, proc: Proc) -> bool:
        """Until the client sleeps in poll on two looks in a row: it has sent its request and
        waits for the answer. (Thinking, it runs or is runnable; writing, it is in disk wait.)
        How long it thinks varies with the machine's load, so this beats a fixed delay."""
        streak = 0
        while proc.running():
            self._check_time()
            waiting = waits_on_io(proc.pid)
            if waiting is None:  # no /proc: only the random delay aims
                return True
            streak = streak + 1 if waiting else 0
            if streak >= 2:
                return True
            time.sleep(0.001)
        return False

    def aim(self, kind: str, gen: int, proc: Proc, run_dir: Path, rng: random.Random) -> str:
        """Wait for a moment of ``kind`` after generation ``gen``; how it was found."""
        if kind == "request":
            if not self._wait_lines(proc, run_dir, gen, 0.002):
                return "run ended first"
            if not self._wait_sent(proc):
                return "run ended first"
            time.sleep(rng.uniform(0.1, 0.6) * self.latency)
            return f"{gen} generations done, next request sent, then a random point"
        if kind == "dev":
            if not self._wait_lines(proc, run_dir, gen, 0.002):
                return "run ended first"
            offset = self.log_size()
            # The population request of a dev generation ends (the server logs it), the
            # client tells CMA-ES, then sends the dev request: aim inside that one.
            while not any(a.is_logits for a in self.accesses(offset)):
                if not proc.running():
                    return "run ended first"
                self._check_time()
                time.sleep(0.002)
            if not self._wait_sent(proc):
                return "run ended first"
            time.sleep(rng.uniform(0.1, 0.6) * self.latency)
            return f"generation {gen + 1}'s population answered, dev request sent, a random point"
        # checkpoint: kill as soon as an atomic write's temp file shows up after `gen`.
        if not self._wait_lines(proc, run_dir, gen, 0.002):
            return "run ended first"
        while proc.running():
            self._check_time()
            if any(is_checkpoint_temp(n) for n in temp_files(run_dir)):
                return f"a checkpoint temp file appeared at or after generation {gen}"
            if history_lines(run_dir) >= self.generations - 1:
                return "no checkpoint temp file seen before the last generations"
            time.sleep(0.0005)
        return "run ended first"

    # ------------------------------------------------------------------ a trial

    def trial(self, i: int, kind: str, gen: int, rng: random.Random) -> dict[str, Any]:
        run_dir = self.work / f"trial-{i}"
        offset = self.log_size()
        proc = Proc(self.tune_argv(run_dir), self.env, self.work, self.work / f"trial-{i}.log")
        try:
            how = self.aim(kind, gen, proc, run_dir, rng)
            t_kill = time.time()
            was_running = proc.running()
            status = proc.kill9()
        finally:
            proc.close()
        left_temps = temp_files(run_dir)
        on_disk = history_lines(run_dir)
        time.sleep(self.latency + 0.3)  # let the server finish and log the orphaned request
        inflight = [
            a for a in self.accesses(offset) if a.start - SLACK_S <= t_kill <= a.end + SLACK_S
        ]
        hit = []
        if any(is_checkpoint_temp(n) for n in left_temps):
            hit.append("checkpoint write")
        for a in inflight:
            if a.is_logits:
                hit.append("dev scoring" if a.bytes_in <= self.dev_split else "request")
            else:
                hit.append(f"request {a.path}")
        if not hit:
            hit.append("between requests")
        completed_before = (run_dir / "z.npy").exists()

        rc, tail = self.run_to_end(
            bbt_argv("tune", "--resume", str(run_dir), "--no-plot", "-q"),
            self.work / f"trial-{i}-resume.log",
        )
        time.sleep(0.2)
        acc = self.accesses(offset)
        fp = fingerprint(run_dir)
        return {
            "trial": i,
            "aimed_at": kind,
            "after_generation": gen,
            "how": how,
            "killed_mid_run": was_running and not completed_before,
            "kill_status": status,
            "hit": sorted(set(hit)),
            "history_lines_at_kill": on_disk,
            "temp_files_at_kill": left_temps,
            "temp_files_after_resume": temp_files(run_dir),
            "resume_exit": rc,
            "resume_error": "" if rc == 0 else tail,
            "fingerprint": fp,
            "server_calls": self.calls(acc),
            "server_requests": len(acc),
        }


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    rng = random.Random(args.rng_seed)
    work = Path(tempfile.mkdtemp(prefix="bbt-crash-"))
    server = MockServer(work, "server", ["--latency-ms", str(args.latency_ms)], child_env(work))
    record: dict[str, Any] = {
        "check": "crash_points",
        "config": {
            "task": "mock",
            "n_tokens": args.n_tokens,
            "dim": args.dim,
            "popsize": args.popsize,
            "budget": args.budget,
            "eval_every": args.eval_every,
            "seed": args.seed,
            "server_latency_ms": args.latency_ms,
            "kills": args.kills,
            "rng_seed": args.rng_seed,
        },
    }
    violations: list[str] = []
    try:
        server.start()
        check = Check(args, work, server)
        ref = check.reference()
        record["reference"] = ref
        if not ref["counts_agree"]:
            violations.append(
                f"server-side count ({ref['server_calls']} calls, {ref['server_requests']} "
                f"requests) disagrees with the manifest ({ref['manifest_calls']}, "
                f"{ref['manifest_requests']}): calls spent twice cannot be measured"
            )
        # Each kind of moment in turn, in a random order; generations drawn at random.
        kinds = [KINDS[i % len(KINDS)] for i in range(args.kills)]
        if args.smoke:
            kinds = ["checkpoint", "dev"][: args.kills]  # the narrow windows
        rng.shuffle(kinds)
        dev_gens = check.dev_generations()
        # One generation's calls may be spent twice: its population and its dev evaluation.
        allowed = args.popsize + 1
        trials: list[dict[str, Any]] = []
        record["trials"] = trials  # filled as they finish: a stopped check keeps its trials
        for i, kind in enumerate(kinds):
            if kind == "dev":
                gen = rng.choice(dev_gens) - 1
            else:
                gen = rng.randint(1, check.generations - 2)
            t = check.trial(i, kind, gen, rng)
            t["calls_spent_twice"] = t["server_calls"] - ref["server_calls"]
            t["requests_spent_twice"] = t["server_requests"] - ref["server_requests"]
            trials.append(t)
            diff = differences(ref["fingerprint"], t["fingerprint"])
            t["identical"] = not diff
            problems = []
            if t["resume_exit"] != 0:
                problems.append(f"resume failed ({t['resume_exit']}): {t['resume_error']}")
            if diff:
                problems.append("differs from the uninterrupted run: " + "; ".join(diff))
            if not 0 <= t["calls_spent_twice"] <= allowed:
                problems.append(f"{t['calls_spent_twice']} calls spent twice (> {allowed})")
            if not t["killed_mid_run"]:
                problems.append("the kill did not land mid-run")
            violations += [f"trial {i}: {p}" for p in problems]
            print(
                f"trial {i}: aimed at {kind:10s} hit {', '.join(t['hit']):24s} "
                f"resume={t['resume_exit']} identical={t['identical']} "
                f"calls spent twice={t['calls_spent_twice']}",
                flush=True,
            )
        hits = {h for t in trials for h in t["hit"]}
        wanted = {"checkpoint write", "dev scoring"} | (set() if args.smoke else {"request"})
        missed = sorted(wanted - hits)
        if missed:
            violations.append(f"never hit: {', '.join(missed)}")
        twice = [t["calls_spent_twice"] for t in trials]
        record.update(
            {
                "hits": {h: sum(h in t["hit"] for t in trials) for h in sorted(hits)},
                "calls_spent_twice": {
                    "max": max(twice, default=0),
                    "total": sum(twice),
                    "allowed_per_kill": allowed,
                },
                "requests_spent_twice_total": sum(t["requests_spent_twice"] for t in trials),
                "all_identical": all(t["identical"] for t in trials),
            }
        )
    except (DeadlineError, RuntimeError, OSError) as exc:
        violations.append(f"check stopped: {type(exc).__name__}: {exc}")
    finally:
        server.close()
        if args.keep is not None:
            shutil.copytree(work, args.keep, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
    record["violations"] = violations
    record["ok"] = not violations
    summary = {k: v for k, v in record.items() if k != "trials"}
    print(json.dumps(summary, indent=1))
    name = "crash_points_smoke.json" if args.smoke else "crash_points.json"
    write_result(args.out_dir / name, record, sys.argv if argv is None else [__file__, *argv])
    return 0 if not violations else 1


if __name__ == "__main__":
    sys.exit(main())
