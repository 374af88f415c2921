"""Bitwise goldens, run under the arithmetic kernels that recorded them.

A bit-for-bit figure depends on the kernels as much as on the code: OpenBLAS picks its
kernels (and so their rounding) by CPU and thread count, and NumPy dispatches its float64
exp/log to AVX-512 loops where the CPU has them. This project's goldens were recorded with
OpenBLAS's SkylakeX kernels on 2 threads and NumPy's x86-64-v4 (AVX-512) loops. A golden test
is marked :data:`pinned_only` and reached through :func:`run_pinned`, which reruns it in a
subprocess pinned to those kernels (OpenBLAS reads ``OPENBLAS_CORETYPE`` and
``OPENBLAS_NUM_THREADS`` when it loads): the same check on any AVX-512 machine whatever its
core count, and a skip that says why on a CPU without AVX-512, which cannot run those
kernels (there the other tests still hold the behaviour, without bitwise goldens).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PINNED = "BBT_GOLDEN_KERNELS_PINNED"
RECORDING_KERNELS = {"OPENBLAS_CORETYPE": "SkylakeX", "OPENBLAS_NUM_THREADS": "2"}
#: x86-64-v4, the AVX-512 level of NumPy's loops when the goldens were recorded.
X86_V4_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})

#: A golden test: runs only inside :func:`run_pinned`'s subprocess.
pinned_only = pytest.mark.skipif(
    os.environ.get(PINNED) != "1", reason="a bitwise golden: run pinned by run_pinned()"
)
#: The test that calls :func:`run_pinned` (not again inside the subprocess).
outside_pinned = pytest.mark.skipif(
    os.environ.get(PINNED) == "1", reason="already inside the pinned subprocess"
)


def cpu_flags() -> set[str]:
    try:
        return set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return set()


def run_pinned(node_ids: list[str]) -> None:
    """Run ``node_ids`` (pytest node ids) pinned to the recording kernels; all must pass."""
    if not cpu_flags() >= X86_V4_FLAGS:
        pytest.skip("bitwise goldens need the AVX-512 kernels they were recorded with")
    env = {**os.environ, **RECORDING_KERNELS, PINNED: "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *node_ids]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "skipped" not in proc.stdout, tail  # every golden really ran
    assert " passed" in proc.stdout, tail
