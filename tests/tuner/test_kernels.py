"""Which kernel set's goldens a CPU runs (tests/tuner/kernels.py)."""

from __future__ import annotations

from .kernels import HASWELL, SKYLAKEX, X86_V4_FLAGS, native_kernels


def test_an_avx512_cpu_runs_the_original_goldens() -> None:
    assert native_kernels({"sse2", "avx2", "fma", *X86_V4_FLAGS}) == SKYLAKEX


def test_an_avx2_only_cpu_runs_the_haswell_goldens() -> None:
    assert native_kernels({"sse2", "avx", "avx2", "fma", "avx512f"}) == HASWELL


def test_a_cpu_without_avx2_and_fma_runs_none() -> None:
    assert native_kernels({"sse2", "avx", "avx2"}) is None
    assert native_kernels(set()) is None
