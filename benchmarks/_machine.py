"""What a result file says about the machine and the code it ran on: CPU flags, load, commit.

One definition for every benchmark (they used to carry their own copies). Free of side
effects and of bbt, so that the process-spawning harnesses (``_campaign``, ``_loadfuzz``)
can import it as well as :mod:`_common`. bbt's own CPU probe (which also asks torch) is
private to its server package; these figures only describe the machine, so reading
``/proc/cpuinfo`` is enough.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

#: The flags that decide bbt's CPU compute path (AVX2, AVX-512, native bfloat16), sorted.
CPU_FLAGS = ("amx_bf16", "avx2", "avx512_bf16", "avx512f")


def cpu_flags(wanted: Sequence[str] = CPU_FLAGS) -> list[str]:
    """The flags of ``wanted`` this CPU has, in ``wanted``'s order (none where
    ``/proc/cpuinfo`` cannot be read)."""
    try:
        present = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return []
    return [f for f in wanted if f in present]


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def git_commit(digits: int | None = None, only: str | None = None) -> str:
    """The checkout's commit, with ``+dirty`` when tracked files differ from it (only those
    under ``only`` with ``+dirty(only)``): a figure is only as good as the code it measured.
    ``digits``: the length of the abbreviated hash (git's default when ``None``)."""
    head = _git("rev-parse", "--short" if digits is None else f"--short={digits}", "HEAD")
    scope = ("--", only) if only else ()
    dirty = _git("status", "--porcelain", "--untracked-files=no", *scope)
    return (head or "unknown") + (("+dirty" + (f"({only})" if only else "")) if dirty else "")


def machine(*, processor: bool = True, flags: bool = False, load: bool = False) -> dict[str, Any]:
    """The machine, for a result file: platform, Python, CPU count (and, as asked, the
    processor, the CPU flags, and the load averages: the machine is shared, and wall times
    mean little without the load they ran under)."""
    out: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    if processor:
        out["processor"] = platform.processor() or platform.machine()
    if flags:
        out["cpu_flags"] = cpu_flags()
    out["gpu"] = None
    if load:
        out["loadavg_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
    return out


def jsonable(value: Any) -> Any:
    """``json.dumps``'s ``default`` for NumPy scalars and arrays."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def write_json(path: Path, record: Any, indent: int = 1) -> Path:
    """Write ``record`` as JSON to ``path`` (its folder made; NumPy values as plain ones)
    and say so."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=indent, default=jsonable) + "\n")
    print(f"wrote {path}", flush=True)
    return path
