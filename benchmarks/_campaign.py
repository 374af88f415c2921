"""What the reliability campaign's scripts share: subprocesses, the mock server, access logs.

``benchmarks/chaos.py`` and ``benchmarks/crash_points.py`` drive real ``bbt`` processes
(``bbt mock-server`` and ``bbt tune``) on loopback and judge a run only by what a user sees:
the exit status, ``bbt tune --resume`` and the artifacts of a run directory (``z.npy``,
``prompt.npy``, ``history.jsonl``, ``manifest.json``). Nothing here reads a checkpoint, so
the checkpoint's name and format may change freely.

Every child runs in its own session (process group), from a scratch working directory (so no
``.env`` is read), with every ``BBT_*`` variable of the caller removed (``BBT_HOME`` points
into the scratch directory) and one BLAS thread (fast on a shared machine, and the same
arithmetic in every process).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import _machine
import numpy as np
from _machine import git_commit

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
#: ``bbt`` from this checkout, whatever ``bbt`` script the environment has on its PATH.
_BBT_CODE = "import sys; from bbt.cli import main; sys.argv = ['bbt', *sys.argv[1:]]; main()"
HOST = "127.0.0.1"
#: History fields that measure time, not the run: excluded from the bitwise comparison.
WALL_FIELDS = frozenset({"wall_time"})
#: Artifacts written with an atomic temp file that are not the checkpoint.
NON_CHECKPOINT = frozenset({"manifest.json", "z.npy", "prompt.npy", "p0.npy", "plot.png"})


def bbt_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", _BBT_CODE, *args]


def child_env(work: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without ``BBT_*`` or proxies, plus ``extra``.

    ``BBT_HOME`` (where bbt keeps per-user state, such as a checkpoint key) points into the
    scratch directory ``work``, the same for every child of one check: the check neither
    reads nor leaves anything in the user's own configuration.
    """
    proxies = {"http_proxy", "https_proxy", "all_proxy"}
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("BBT_") and k.lower() not in proxies
    }
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + path if path else "")
    env.update(
        OPENBLAS_NUM_THREADS="1",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        NO_PROXY=f"{HOST},localhost",
        no_proxy=f"{HOST},localhost",
    )
    home = work / "bbt-home"
    home.mkdir(mode=0o700, exist_ok=True)
    env["BBT_HOME"] = str(home)
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------- processes


class Proc:
    """A child in its own process group, stdout and stderr appended to ``log``."""

    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path, log: Path) -> None:
        self.log = log
        self._fh: IO[bytes] = log.open("ab")
        try:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            self._fh.close()
            raise
        self.pid = self.popen.pid

    def running(self) -> bool:
        return self.popen.poll() is None

    def _signal_group(self, sig: signal.Signals) -> None:
        # The group id is the child's pid (start_new_session); nothing else is signalled.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill9(self) -> int:
        """SIGKILL the whole group and reap the child; its exit status."""
        self._signal_group(signal.SIGKILL)
        return self.popen.wait(timeout=30)

    def wait(self, timeout: float) -> int | None:
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        """Stop the child if it still runs (TERM, then KILL), reap it, close the log."""
        if self.running():
            self._signal_group(signal.SIGTERM)
            if self.wait(5) is None:
                self.kill9()
        else:
            self._signal_group(signal.SIGKILL)  # stray grandchildren, if any
        self.popen.wait()
        self._fh.close()

    def tail(self, chars: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class MockServer:
    """``bbt mock-server`` on a fixed loopback port, killable and restartable on that port.

    Each incarnation logs to its own file (``<name>-<i>.log``); the fault sequence of
    incarnation ``i`` is seeded with ``fault_seed + i``. ``port`` 0 picks a free one.
    """

    workdir: Path
    name: str
    args: list[str]
    env: dict[str, str]
    fault_seed: int = 0
    port: int = 0
    logs: list[Path] = field(default_factory=list, init=False)
    proc: Proc | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self, timeout: float = 60.0) -> float:
        """Start an incarnation and wait until /healthz answers; seconds it took."""
        t0 = time.perf_counter()
        self.launch()
        self.wait_ready(timeout)
        return time.perf_counter() - t0

    def launch(self) -> None:
        """Start an incarnation without waiting for it (see :meth:`wait_ready`)."""
        i = len(self.logs)
        log = self.workdir / f"{self.name}-{i}.log"
        self.logs.append(log)
        argv = bbt_argv(
            "mock-server",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--log-level",
            "info",
            "--fault-seed",
            str(self.fault_seed + i),
            *self.args,
        )
        self.proc = Proc(argv, self.env, self.workdir, log)

    def wait_ready(self, timeout: float = 60.0) -> None:
        assert self.proc is not None, "launch() first"
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while True:
            if not self.proc.running():
                raise RuntimeError(f"{self.name} exited at start: {self.proc.tail()}")
            try:
                with opener.open(f"{self.url}/healthz", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} did not answer /healthz in {timeout:.0f} s")
            time.sleep(0.05)

    def kill9(self) -> None:
        if self.proc is not None:
            self.proc.kill9()
            self.proc.close()
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.close()
            self.proc = None

    def accesses(self) -> list[Access]:
        return [a for log in self.logs for a in read_access_log(log)]


def waits_on_io(pid: int) -> bool | None:
    """Whether ``pid`` sleeps in poll/select (as a client waiting for an answer does), from
    /proc; None where there is no /proc or the process is gone. Running, runnable, in disk
    wait or in ``time.sleep`` (a retry's backoff) is False."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip()
    except OSError:
        return None
    # "pid (comm) S ...": comm may hold spaces or parentheses, so split at the last ")".
    if stat.rsplit(")", 1)[1].split()[0] != "S":
        return False
    return any(w in wchan for w in ("poll", "select", "wait_data"))


# --------------------------------------------------------------------------- access log

_ACCESS = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) \S+ bbt\.server\.access "
    r"(?P<method>\S+) (?P<path>\S+) (?P<status>\S+) (?P<ms>[\d.]+)ms "
    r"in=(?P<bin>\d+) out=(?P<bout>\d+)(?: id=\S+)?(?: fault=(?P<fault>\S+))?"
)


@dataclass(frozen=True)
class Access:
    """One line of the server's access log (written when the request ended)."""

    end: float  # epoch seconds, millisecond resolution
    ms: float
    method: str
    path: str
    status: str  # "200", "503", "dropped", "0" (client gone before its body arrived)
    bytes_in: int
    bytes_out: int
    fault: str | None

    @property
    def start(self) -> float:
        return self.end - self.ms / 1000.0

    @property
    def is_logits(self) -> bool:
        return self.method == "POST" and self.path.endswith("/logits")


def read_access_log(path: Path, offset: int = 0) -> list[Access]:
    try:
        with path.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        m = _ACCESS.match(line)
        if m is None:
            continue
        end = datetime.strptime(m["ts"], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        out.append(
            Access(
                end=end,
                ms=float(m["ms"]),
                method=m["method"],
                path=m["path"],
                status=m["status"],
                bytes_in=int(m["bin"]),
                bytes_out=int(m["bout"]),
                fault=m["fault"],
            )
        )
    return out


def status_counts(accesses: list[Access]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in accesses:
        key = f"fault={a.fault}" if a.fault else f"status={a.status}"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


# --------------------------------------------------------------------------- run directories


def history_lines(run_dir: Path) -> int:
    try:
        return (run_dir / "history.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def temp_files(run_dir: Path) -> list[str]:
    """Temp files of atomic writes (``.NAME.XXXX.tmp``) now in ``run_dir``."""
    try:
        return sorted(e.name for e in os.scandir(run_dir) if e.name.endswith(".tmp"))
    except OSError:
        return []


def temp_target(name: str) -> str:
    """``manifest.json`` for ``.manifest.json.ab12cd.tmp``."""
    return name[1:].rsplit(".", 2)[0] if name.startswith(".") else name


def is_checkpoint_temp(name: str) -> bool:
    return temp_target(name) not in NON_CHECKPOINT


def read_manifest(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "manifest.json").read_text())
    return data


def fingerprint(run_dir: Path) -> dict[str, Any]:
    """What must be bitwise identical between two runs of one configuration: z, the prompt,
    the history without wall times, and the recorded result without elapsed time."""
    out: dict[str, Any] = {}
    for name in ("z.npy", "prompt.npy"):
        try:
            arr = np.load(run_dir / name, allow_pickle=False)
        except (OSError, ValueError) as exc:
            out[name] = f"missing: {exc}"
            continue
        digest = hashlib.sha256(arr.tobytes()).hexdigest()
        out[name] = f"{arr.dtype}{list(arr.shape)}:{digest[:16]}"
    try:
        rows = [json.loads(x) for x in (run_dir / "history.jsonl").read_text().splitlines()]
        for r in rows:
            for k in WALL_FIELDS:
                r.pop(k, None)
        canon = "\n".join(json.dumps(r, sort_keys=True) for r in rows)
        out["history"] = f"{len(rows)} rows:{hashlib.sha256(canon.encode()).hexdigest()[:16]}"
    except (OSError, ValueError) as exc:
        out["history"] = f"missing: {exc}"
    try:
        manifest = read_manifest(run_dir)
        result = dict(manifest.get("result") or {})
        result.pop("elapsed_s", None)
        out["status"] = manifest.get("status")
        out["result"] = hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()[:16]
    except (OSError, ValueError) as exc:
        out["status"] = f"missing: {exc}"
    return out


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [
        f"{k}: {a.get(k)} != {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
    ]


# --------------------------------------------------------------------------- result files


def add_run_flags(p: argparse.ArgumentParser, *, budget: int, dim: int, seed: int) -> None:
    """The tuning run's flags, as the campaigns (chaos, crash points) take them."""
    p.add_argument("--budget", type=int, default=budget)
    p.add_argument("--popsize", type=int, default=20)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--n-tokens", type=int, default=10)
    p.add_argument("--dim", type=int, default=dim)
    p.add_argument("--seed", type=int, default=seed, help="seed of the tuning run")


def add_output_flags(p: argparse.ArgumentParser, *, time_limit: float, smoke_help: str) -> None:
    """A campaign's time limit, where its files go, and ``--smoke``."""
    p.add_argument("--time-limit", type=float, default=time_limit, help="s for the whole check")
    p.add_argument("--keep", type=Path, default=None, help="keep run dirs and logs here")
    p.add_argument("--out-dir", type=Path, default=RESULTS)
    p.add_argument("--smoke", action="store_true", help=smoke_help)


def commit() -> str:
    return git_commit(digits=12, only="bbt")


def machine() -> dict[str, Any]:
    return _machine.machine(processor=False, flags=True, load=True)


def write_result(path: Path, record: dict[str, Any], argv: list[str]) -> None:
    full = {
        "command": " ".join(["python", *argv]),
        "commit": commit(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        **record,
    }
    _machine.write_json(path, full)
