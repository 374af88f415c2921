"""Bitwise goldens, run under the arithmetic kernels that recorded them.

A bit-for-bit figure depends on the kernels as much as on the code: OpenBLAS picks its
kernels (and so their rounding) by CPU and thread count, and NumPy dispatches its float64
exp/log to AVX-512 or AVX2 loops by what the CPU has. A golden test is marked
:data:`pinned_only` and reached through :func:`run_pinned`, which reruns it in a subprocess
pinned to one :class:`KernelSet` (OpenBLAS reads ``OPENBLAS_CORETYPE`` and
``OPENBLAS_NUM_THREADS`` when it loads), the one this CPU runs natively:

- :data:`SKYLAKEX`: OpenBLAS's SkylakeX kernels on 2 threads and NumPy's x86-64-v4
  (AVX-512) loops. This project's original goldens, recorded before the redesign of
  issue 19, so they also show that the redesign changed no result.
- :data:`HASWELL`: OpenBLAS's Haswell kernels on 2 threads and NumPy's x86-64-v3 (AVX2 +
  FMA) loops, what an AVX2-only CPU (Intel Haswell and later, AMD Zen) runs. Recorded by
  ``tests/tuner/record_goldens.py`` from the code of the commit that added them: they hold
  today's bits against later changes on those machines, not the pre-redesign bits.

A test whose data was written under one set only (a run checkpointed by old code on an
AVX-512 machine) names that set; elsewhere it skips and says why, and the other tests
still hold the behaviour without bitwise goldens.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PINNED = "BBT_GOLDEN_KERNELS_PINNED"
#: The :attr:`KernelSet.name` a pinned subprocess runs under.
KERNELS = "BBT_GOLDEN_KERNELS"


@dataclass(frozen=True)
class KernelSet:
    """The CPU flags a set needs and the environment that pins OpenBLAS to it."""

    name: str
    flags: frozenset[str]
    env: dict[str, str] = field(hash=False)


#: x86-64-v4, the AVX-512 level of NumPy's loops when the original goldens were recorded.
X86_V4_FLAGS = frozenset({"avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"})
SKYLAKEX = KernelSet(
    "skylakex", X86_V4_FLAGS, {"OPENBLAS_CORETYPE": "SkylakeX", "OPENBLAS_NUM_THREADS": "2"}
)
HASWELL = KernelSet(
    "haswell",
    frozenset({"avx2", "fma"}),
    {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "2"},
)
KERNEL_SETS = {k.name: k for k in (SKYLAKEX, HASWELL)}

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


def native_kernels(flags: set[str] | None = None) -> KernelSet | None:
    """The set this CPU's NumPy dispatches to: AVX-512 before AVX2; None for neither.

    Only that set runs. An AVX-512 machine might run the Haswell set too, with NumPy's
    ``NPY_DISABLE_CPU_FEATURES="X86_V4 AVX512_ICL AVX512_SPR"``, but that is untried."""
    have = cpu_flags() if flags is None else flags
    for kernels in (SKYLAKEX, HASWELL):
        if have >= kernels.flags:
            return kernels
    return None


def active_kernels() -> KernelSet:
    """Inside a pinned subprocess: the set it runs under (the original one by default)."""
    return KERNEL_SETS[os.environ.get(KERNELS, SKYLAKEX.name)]


def run_pinned(node_ids: list[str], only: KernelSet | None = None) -> None:
    """Run ``node_ids`` (pytest node ids) pinned to this CPU's kernel set; all must pass.

    ``only``: the data of these tests was written under that set alone."""
    kernels = native_kernels()
    if kernels is None:
        pytest.skip("bitwise goldens need AVX-512 or AVX2 + FMA kernels")
    if only is not None and kernels != only:
        pytest.skip(f"this golden was written under the {only.name} kernels, which this CPU lacks")
    env = {**os.environ, **kernels.env, PINNED: "1", KERNELS: kernels.name}
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *node_ids]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    assert "skipped" not in proc.stdout, tail  # every golden really ran
    assert " passed" in proc.stdout, tail
