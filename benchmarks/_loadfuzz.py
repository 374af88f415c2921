"""Process plumbing shared by ``load.py``, ``fuzz_openapi.py`` and ``secrets_scan.py``.

- :class:`ServerProc`: ``bbt mock-server`` or ``bbt serve`` as a child process in its own
  process group, on a free loopback port (``--port 0``; the port is read back from the
  line the command prints), with its stderr (and so its access log) in a file, and its
  resident memory read from ``/proc/PID/status``.
- :func:`parse_access_log`: the app's one line per request (``bbt.server.access``).
- ``python benchmarks/_loadfuzz.py tune-client TAG LOG -- ARGS``: ``bbt ARGS`` in this
  process, with every HTTP attempt timed client-side and tagged with an ``X-Request-ID``
  of ``TAG-<n>`` (the server echoes and logs well-formed request ids), so the server's
  access log attributes each request to its client. Nothing else in bbt changes.

Every child is started with ``start_new_session=True`` and stopped by signalling its
whole process group (TERM, then KILL), so nothing outlives a benchmark.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import httpx
import numpy as np
from _machine import cpu_flags, git_commit

__all__ = ["cpu_flags", "git_commit"]  # the machine's, for the scripts that import them here

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
#: Runs ``bbt`` from this checkout (bbt.cli has no ``__main__``).
BBT_BOOT = "import sys; from bbt.cli import main; sys.argv[0] = 'bbt'; main()"
_URL_RE = re.compile(r"http://127\.0\.0\.1:(\d+)")
_ACCESS_RE = re.compile(
    r"bbt\.server\.access (?P<method>\S+) (?P<path>\S+) (?P<status>\S+) "
    r"(?P<ms>[\d.]+)ms in=(?P<bytes_in>\d+) out=(?P<bytes_out>\d+) id=(?P<id>\S+)"
)


def bbt_argv(*args: str) -> list[str]:
    return [sys.executable, "-c", BBT_BOOT, *args]


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This checkout first on the path, offline, and no BBT_* setting unless given here."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BBT_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.update(extra or {})
    return env


def stop_group(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """TERM the child's process group, then KILL it if it is still there after ``grace_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=grace_s)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (peak) of ``pid`` in KiB, from /proc (Linux)."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0])
    return out


class ServerProc:
    """``bbt <command> --host 127.0.0.1 --port 0 ARGS`` as a child; a context manager."""

    def __init__(
        self,
        command: str,
        args: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        start_timeout_s: float = 180.0,
    ) -> None:
        self.command = command
        self.args = list(args)
        self.log_path = log_path
        self.env = child_env(env)
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.base_url = ""

    def __enter__(self) -> ServerProc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        argv = bbt_argv(self.command, "--host", HOST, "--port", "0", *self.args)
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.log_path.parent,
            start_new_session=True,
        )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.start_timeout_s
        while not self.base_url:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.command} exited {self.proc.returncode}: {self.tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.command} did not start: {self.tail()}")
            m = _URL_RE.search(self.log_path.read_text(errors="replace"))
            if m:
                self.base_url = f"http://{HOST}:{m.group(1)}"
            else:
                time.sleep(0.1)
        while True:  # the socket is bound before uvicorn listens on it
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.command} is not answering: {self.tail()}")
            time.sleep(0.1)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def memory_kib(self) -> dict[str, int]:
        return memory_kib(self.pid)

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.base_url}/healthz", timeout=10).status_code == 200
        except httpx.HTTPError:
            return False

    def tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop_group(self.proc)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def parse_access_log(text: str) -> list[dict[str, Any]]:
    """One dict per access-log line: method, path, status (str: 'dropped' is possible), ms, id."""
    rows = []
    for m in _ACCESS_RE.finditer(text):
        rows.append(
            {
                "method": m["method"],
                "path": m["path"],
                "status": m["status"],
                "ms": float(m["ms"]),
                "bytes_in": int(m["bytes_in"]),
                "bytes_out": int(m["bytes_out"]),
                "id": m["id"],
            }
        )
    return rows


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 99)) -> dict[str, float]:
    if not values:
        return {f"p{q:g}": float("nan") for q in qs}
    arr = np.asarray(values, dtype=np.float64)
    return {f"p{q:g}": round(float(np.percentile(arr, q)), 2) for q in qs}


# --------------------------------------------------------------------------- tune client


def _tune_client(tag: str, log_path: Path, args: list[str]) -> int:
    """Run ``bbt ARGS`` here, tagging and timing every HTTP attempt (written to log_path)."""
    from bbt.protocol import REQUEST_ID_HEADER

    records: list[dict[str, Any]] = []
    counter = itertools.count(1)
    original = httpx.Client.send

    def send(self: httpx.Client, request: httpx.Request, **kw: Any) -> httpx.Response:
        request.headers[REQUEST_ID_HEADER] = f"{tag}-{next(counter)}"
        rec: dict[str, Any] = {
            "id": request.headers[REQUEST_ID_HEADER],
            "method": request.method,
            "path": request.url.path,
            "start": time.time(),
        }
        began = time.perf_counter()
        try:
            response = original(self, request, **kw)
        except Exception as exc:
            rec["error"] = type(exc).__name__
            raise
        else:
            rec["status"] = response.status_code
            rec["retry_after"] = response.headers.get("retry-after")
            return response
        finally:
            rec["ms"] = (time.perf_counter() - began) * 1000
            records.append(rec)

    httpx.Client.send = send  # type: ignore[method-assign]
    from bbt.cli import main

    sys.argv = ["bbt", *args]
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        log_path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return code


if __name__ == "__main__":
    if len(sys.argv) < 5 or sys.argv[1] != "tune-client" or sys.argv[4] != "--":
        raise SystemExit("usage: _loadfuzz.py tune-client TAG LOG -- BBT-ARGS...")
    sys.exit(_tune_client(sys.argv[2], Path(sys.argv[3]), sys.argv[5:]))
