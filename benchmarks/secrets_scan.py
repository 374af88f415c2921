"""Secrets: a random canary API key in the environment must never land in anything written.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/secrets_scan.py [--smoke] [--out-dir DIR]
        [--work DIR] [--no-suite]

Draws a fresh canary key and, with it in the environment (``BBT_API_KEY`` for clients,
``BBT_SERVER_API_KEYS`` for servers) and ``TMPDIR`` pointed into the scanned folder:

1. **Tune runs** (smoke and full): ``bbt mock-server`` requiring the canary, at debug log
   level, with injected 503s, 429s and dropped connections; ``bbt tune`` against it
   (retries exercised); then failing paths, so exception messages get printed: the canary
   sent to a server that expects another key (401), to a closed port (connection error
   after retries), to a wrong path (404), and once as ``--api-key`` on the command line
   (401). Full mode adds ``bbt eval`` and ``bbt predict`` on the finished run.
2. **The whole test suite** (full mode): ``pytest -W error --basetemp DIR -rA`` (``-rA``
   puts every test's captured stdout, stderr and log in the report) with the
   ``_secrets_probe`` plugin, which also writes down every bbt exception message and log
   record.

Then it scans every file under the work folder (server logs, captured stdout/stderr, run
directories, pytest's basetemp, TMPDIR) plus files changed since the start in this
checkout and in ``~/.cache``, ``~/.config`` and ``~/.local``, for the canary: raw,
URL-encoded, hex, and its base64 (standard and URL-safe alphabets, at all three byte
alignments, so a key inside a larger encoded blob is found too). A planted file checks
first that the scanner finds each form. Writes ``results/secrets.json``
(``secrets_smoke.json``) with the hits (paths and forms; never the canary); exits 1 on
any hit.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from _common import RESULTS, write_result
from _loadfuzz import ROOT, ServerProc, bbt_argv, child_env, cpu_flags, git_commit

MAX_SCAN_BYTES = 512 * 1024 * 1024
TUNE = ["--task", "mock", "--budget", "60", "--popsize", "10", "--n-tokens", "5", "--dim", "50",
        "--k-shot", "4", "--eval-every", "20", "--no-plot"]  # fmt: skip
FAULTS = ["--rate-503", "0.2", "--rate-429", "0.05", "--retry-after", "0", "--rate-drop", "0.1"]
_TRACEBACK = "Traceback (most recent call last)"


def new_canary() -> str:
    # '+' and '/' make the URL-encoded form differ from the raw one; keys do contain them.
    return f"bbt-canary-{secrets.token_hex(10)}+/{secrets.token_hex(6)}"


def _b64_cores(raw: bytes) -> dict[str, bytes]:
    """The part of base64(prefix + raw) that depends on raw alone, for each alignment."""
    out: dict[str, bytes] = {}
    for k in range(3):
        enc = base64.b64encode(b"\0" * k + raw)
        start = -(-4 * k // 3)  # chars touching a prefix bit
        end = ((k + len(raw)) * 8) // 6  # chars made of data bits only
        core = enc[start:end]
        out[f"base64@{k}"] = core
        out[f"base64url@{k}"] = core.translate(bytes.maketrans(b"+/", b"-_"))
    return out


def forms(canary: str) -> dict[str, bytes]:
    """Every encoding the scan looks for, by name (duplicates dropped)."""
    raw = canary.encode()
    found: dict[str, bytes] = {
        "raw": raw,
        "url": urllib.parse.quote(canary, safe="").encode(),
        "url_plus": urllib.parse.quote_plus(canary).encode(),
        "hex": raw.hex().encode(),
        "json_escaped_slash": canary.replace("/", "\\/").encode(),
        **_b64_cores(raw),
    }
    seen: set[bytes] = set()
    unique = {}
    for name, value in found.items():
        if value not in seen:
            seen.add(value)
            unique[name] = value
    return unique


def scan_files(paths: Iterable[Path], patterns: dict[str, bytes], base: Path) -> dict[str, Any]:
    hits: list[dict[str, Any]] = []
    files = 0
    size = 0
    skipped: list[str] = []
    for path in paths:
        try:
            if not path.is_file() or path.is_symlink():
                continue
            st = path.stat()
            if st.st_size > MAX_SCAN_BYTES:
                skipped.append(str(path))
                continue
            data = path.read_bytes()
        except OSError:
            continue
        files += 1
        size += len(data)
        for name, pat in patterns.items():
            at = data.find(pat)
            if at >= 0:
                hits.append({"path": _rel(path, base), "form": name, "offset": at})
    return {"files": files, "bytes": size, "hits": hits, "skipped_too_large": skipped}


def _rel(path: Path, base: Path) -> str:
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def walk(root: Path, since: float | None = None, skip: Sequence[str] = ()) -> list[Path]:
    out: list[Path] = []
    if not root.is_dir():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames:
            p = Path(dirpath) / name
            if since is None:
                out.append(p)
                continue
            try:
                if p.lstat().st_mtime >= since:
                    out.append(p)
            except OSError:
                pass
    return out


def self_check(patterns: dict[str, bytes], canary: str, work: Path) -> bool:
    """The scanner must find the canary planted in each form, mid-blob."""
    plant = work / "plant"
    plant.mkdir(parents=True)
    raw = canary.encode()
    samples = {
        "raw": b"x" + raw + b"y",
        "url": b"key=" + urllib.parse.quote(canary, safe="").encode(),
        "b64_0": base64.b64encode(raw),
        "b64_1": base64.b64encode(b"Bearer " + raw + b"!"),  # 7 bytes ahead: alignment 1
        "b64_2": base64.b64encode(b"ab" + raw),
        "b64url": base64.urlsafe_b64encode(b"a" + raw),
        "hex": b"0x" + raw.hex().encode(),
    }
    for name, data in samples.items():
        (plant / name).write_bytes(data)
    result = scan_files(walk(plant), patterns, plant)
    found = {h["path"] for h in result["hits"]}
    return found == set(samples)


# --------------------------------------------------------------------------- steps


def run_cli(
    label: str, argv: list[str], env: dict[str, str], cwd: Path, timeout: float, expect: int = 0
) -> dict[str, Any]:
    """Run ``argv`` to the end with output captured to ``cwd/<label>.out``; its step record."""
    started = time.monotonic()
    result = _finish(label, _start(label, argv, env, cwd), cwd, expect, timeout)
    return {**result, "seconds": round(time.monotonic() - started, 1)}


def tune_steps(canary: str, work: Path, full: bool) -> list[dict[str, Any]]:
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    client_env = child_env({"BBT_API_KEY": canary, "TMPDIR": str(tmp)})
    server_env = {"BBT_SERVER_API_KEYS": canary, "TMPDIR": str(tmp)}
    other_env = {"BBT_SERVER_API_KEYS": "another-key-" + secrets.token_hex(4), "TMPDIR": str(tmp)}
    steps: list[dict[str, Any]] = []
    debug = ["--log-level", "debug"]
    with (
        ServerProc("mock-server", [*debug, *FAULTS], work / "server-faults.log", server_env) as s1,
        ServerProc("mock-server", debug, work / "server-other-key.log", other_env) as s2,
    ):
        closed = _closed_port()
        runs = work / "runs"
        runs.mkdir()
        jobs = [
            ("tune", ["tune", *TUNE, "--base-url", s1.base_url, "--out", str(runs / "ok")], 0),
            ("tune_401", ["tune", *TUNE, "--base-url", s2.base_url, "--out", str(runs / "a")], 2),
            (
                "tune_closed_port",
                [
                    "tune",
                    *TUNE,
                    "--base-url",
                    f"http://127.0.0.1:{closed}",
                    "--out",
                    str(runs / "b"),
                ],
                2,
            ),
            (
                "tune_wrong_path",
                ["tune", *TUNE, "--base-url", f"{s1.base_url}/nope", "--out", str(runs / "c")],
                2,
            ),
            (
                "tune_key_on_argv_401",
                [
                    "tune",
                    *TUNE,
                    "--base-url",
                    s2.base_url,
                    "--api-key",
                    canary,
                    "--out",
                    str(runs / "d"),
                ],
                2,
            ),
        ]
        # Independent: run them side by side (each is mostly process start-up).
        procs = []
        for label, args, expect in jobs:
            procs.append((label, expect, _start(label, bbt_argv(*args), client_env, work)))
        for label, expect, proc in procs:
            steps.append(_finish(label, proc, work, expect))
        if full and (runs / "ok" / "prompt.npy").is_file():
            data = work / "inputs.tsv"
            data.write_text("text\tlabel\nkabo tufa\t1\nzedo lima\t0\n")
            for label, args in (
                (
                    "eval",
                    ["eval", str(runs / "ok"), "--data", str(data), "--base-url", s1.base_url],
                ),
                ("predict", ["predict", str(runs / "ok"), "some words", "--base-url", s1.base_url]),
            ):
                steps.append(run_cli(label, bbt_argv(*args), client_env, work, 300))
    if full:
        # The chaos run (faults, server kills, retries) with the canary as its API key; every
        # run directory and log it writes stays under work/ and is scanned with the rest.
        steps.append(chaos_step(canary, work, client_env))
    return steps


def chaos_step(canary: str, work: Path, env: dict[str, str]) -> dict[str, Any]:
    """``benchmarks/chaos.py`` serving and sending the canary, everything kept in work/chaos."""
    script = Path(__file__).resolve().parent / "chaos.py"
    argv = [sys.executable, str(script), "--api-key-env", "BBT_SECRETS_CANARY"]
    argv += ["--keep", str(work / "chaos")]
    env = {**env, "BBT_SECRETS_CANARY": canary}
    return run_cli("chaos_run", argv, env, work, 900)


def _start(label: str, argv: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    out = (cwd / f"{label}.out").open("wb")
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    out.close()  # the child holds its own copy
    return proc


def _finish(
    label: str, proc: subprocess.Popen[bytes], cwd: Path, expect: int, timeout: float = 600
) -> dict[str, Any]:
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
    text = (cwd / f"{label}.out").read_text(errors="replace")
    return {
        "step": label,
        "exit": proc.returncode,
        "expected_exit": expect,
        "traceback": _TRACEBACK in text,
        "error_lines": len([ln for ln in text.splitlines() if ln.startswith("error:")]),
        "first_error": next((ln for ln in text.splitlines() if ln.startswith("error:")), None),
    }


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: nothing listens there


def suite_step(canary: str, work: Path, timeout: float, extra: list[str]) -> dict[str, Any]:
    tmp = work / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    basetemp = work / "pytest-basetemp"
    env = child_env(
        {
            "BBT_API_KEY": canary,
            "BBT_SERVER_API_KEYS": canary,
            "TMPDIR": str(tmp),
            "SECRETS_PROBE_DIR": str(work / "probe"),
        }
    )
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "benchmarks")])
    argv = [
        sys.executable, "-m", "pytest", "-W", "error", "-p", "no:cacheprovider",
        "-p", "_secrets_probe", "--basetemp", str(basetemp), "-rA", "-q", *extra,
    ]  # fmt: skip
    started = time.monotonic()
    out = work / "pytest.out"
    with out.open("wb") as f:
        proc = subprocess.Popen(
            argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True
        )
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    text = out.read_text(errors="replace")
    summary = [
        ln.strip("= ")
        for ln in text.splitlines()
        if re.match(r"^(=+ )?\d+ (passed|failed|error)", ln)
    ]
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", text, flags=re.MULTILINE)
    probe = work / "probe"
    return {
        "step": "pytest",
        # What the probe saw: proof that it ran, and how much text the scan covered.
        "probe_exception_messages": _lines(probe / "exceptions.txt"),
        "probe_log_records": _lines(probe / "log.txt"),
        "command": " ".join(["python", "-m", "pytest", *argv[3:]]).replace(str(work), "WORK"),
        "exit": proc.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "summary": summary[-1] if summary else None,
        "failed": failed[:50],
    }


def _lines(path: Path) -> int:
    try:
        return len(path.read_bytes().splitlines())
    except OSError:
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="the tune runs only")
    ap.add_argument("--no-suite", action="store_true", help="skip the test suite")
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--work", type=Path, default=None, help="keep everything here")
    ap.add_argument("--suite-timeout", type=float, default=3600.0)
    ap.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument")
    args = ap.parse_args(argv)

    import tempfile

    canary = new_canary()
    commit = git_commit()  # the commit this run starts on
    patterns = forms(canary)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="bbt-secrets-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        scanner_ok = self_check(patterns, canary, work / "selfcheck")
        print(f"scanner finds every planted form: {scanner_ok}", flush=True)
        print("tune runs ...", flush=True)
        steps = tune_steps(canary, work / "tune", full=not args.smoke)
        for s in steps:
            print(f"  {s}")
        if not args.smoke and not args.no_suite:
            print("test suite ...", flush=True)
            suite = suite_step(canary, work / "suite", args.suite_timeout, args.pytest_arg)
            steps.append(suite)
            print(f"  {suite}")
        scanned = [p for p in walk(work) if "selfcheck" not in p.parts]
        changed = walk(ROOT, since=started, skip=(".git", ".venv", "__pycache__"))
        home = Path.home()
        for sub in (".cache", ".config", ".local"):
            changed += walk(home / sub, since=started)
        result = scan_files([*scanned, *changed], patterns, work)
    hits = result["hits"]
    steps_ok = all(
        s.get("exit") == s.get("expected_exit", 0) for s in steps if "expected_exit" in s
    )
    no_traceback = not any(s.get("traceback") for s in steps)
    record = {
        "commit": commit,
        "cpu_flags": cpu_flags(),
        "canary": {"length": len(canary), "forms": sorted(patterns)},
        "scanner_self_check": scanner_ok,
        "steps": steps,
        "files_scanned": result["files"],
        "bytes_scanned": result["bytes"],
        "changed_files_outside_work": len(changed),
        "changed_files_outside_work_list": sorted(str(p) for p in changed)[:300],
        "skipped_too_large": result["skipped_too_large"],
        "hits": hits,
        "steps_as_expected": steps_ok,
        "no_traceback": no_traceback,
    }
    print(
        f"scanned {result['files']} files ({result['bytes'] / 1e6:.1f} MB), "
        f"{len(changed)} of them changed outside the work folder: {len(hits)} hits"
    )
    for h in hits:
        print(f"  HIT {h['form']} in {h['path']} at {h['offset']}")
    write_result("secrets_smoke" if args.smoke else "secrets", record, args.out_dir or RESULTS)
    return 0 if scanner_ok and not hits else 1


if __name__ == "__main__":
    sys.exit(main())
