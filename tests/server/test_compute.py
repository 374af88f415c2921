"""The ``dtype="auto"`` rule over fake CPUs: it never picks emulated bf16."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bbt.server._compute import (
    CALIBRATION_SLACK,
    NATIVE_BF16_FLAGS,
    ONEDNN_ISAS,
    CpuInfo,
    choose_cpu_dtype,
    choose_cuda_dtype,
    choose_device,
    cpu_flags,
    native_bf16_block,
    onednn_cap,
)

AVX2_LAPTOP = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c"})
SKYLAKE_X = AVX2_LAPTOP | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"}
SAPPHIRE = SKYLAKE_X | {"avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"}


def test_avx2_only_cpu_gets_float32_with_a_reason() -> None:
    choice = choose_cpu_dtype(CpuInfo(AVX2_LAPTOP, aten_capability="AVX2"))
    assert (choice.dtype, choice.device) == ("float32", "cpu")
    assert choice.reason == "float32: CPU has no native bf16 (avx2 only)"


def test_avx512_without_bf16_gets_float32() -> None:
    # AVX-512 alone (Skylake-X, Ice Lake) still emulates bf16 dot products.
    choice = choose_cpu_dtype(CpuInfo(SKYLAKE_X, aten_capability="AVX512"))
    assert choice.dtype == "float32"
    assert "no native bf16" in choice.reason


def test_native_bf16_cpu_gets_bfloat16() -> None:
    choice = choose_cpu_dtype(CpuInfo(SAPPHIRE, aten_capability="AVX512", bf16_over_fp32=0.2))
    assert choice.dtype == "bfloat16"
    assert "amx_bf16" in choice.reason
    assert "5.0x" in choice.reason


@pytest.mark.parametrize("flag", NATIVE_BF16_FLAGS)
def test_either_native_flag_is_enough(flag: str) -> None:
    assert choose_cpu_dtype(CpuInfo(SKYLAKE_X | {flag}, aten_capability="AVX512")).dtype == (
        "bfloat16"
    )


@pytest.mark.parametrize("cap", ["AVX2", "avx2", "AVX512_CORE", "AVX512_CORE_VNNI", "SSE41"])
def test_onednn_cap_below_bf16_gives_float32(cap: str) -> None:
    choice = choose_cpu_dtype(CpuInfo(SAPPHIRE, aten_capability="AVX512", onednn_max_isa=cap))
    assert choice.dtype == "float32"
    assert "ONEDNN_MAX_CPU_ISA" in choice.reason


@pytest.mark.parametrize("cap", ["AVX512_CORE_BF16", "AVX512_CORE_AMX", "ALL", "default"])
def test_onednn_cap_at_or_above_bf16_keeps_bfloat16(cap: str) -> None:
    info = CpuInfo(SAPPHIRE, aten_capability="AVX512", onednn_max_isa=cap)
    assert choose_cpu_dtype(info).dtype == "bfloat16"


def test_unknown_onednn_cap_is_taken_as_a_cap() -> None:
    info = CpuInfo(SAPPHIRE, aten_capability="AVX512", onednn_max_isa="AVX9000")
    assert choose_cpu_dtype(info).dtype == "float32"


@pytest.mark.parametrize("cap", ["AVX2", "DEFAULT"])
def test_aten_capability_cap_gives_float32(cap: str) -> None:
    choice = choose_cpu_dtype(CpuInfo(SAPPHIRE, aten_capability=cap))
    assert choice.dtype == "float32"
    assert "ATEN_CPU_CAPABILITY" in choice.reason


def test_a_slow_calibration_overrules_the_flags() -> None:
    info = CpuInfo(SAPPHIRE, aten_capability="AVX512", bf16_over_fp32=CALIBRATION_SLACK + 0.5)
    choice = choose_cpu_dtype(info)
    assert choice.dtype == "float32"
    assert "slower than float32" in choice.reason


@given(
    flags=st.frozensets(st.sampled_from(sorted(SAPPHIRE | {"sse2", "neon", "asimd"}))),
    aten=st.sampled_from([None, "DEFAULT", "AVX2", "AVX512", "ZVECTOR"]),
    cap=st.sampled_from([None, "ALL", *ONEDNN_ISAS]),
    ratio=st.one_of(st.none(), st.floats(0.05, 20.0)),
)
def test_never_picks_emulated_bf16(
    flags: frozenset[str], aten: str | None, cap: str | None, ratio: float | None
) -> None:
    choice = choose_cpu_dtype(CpuInfo(flags, aten, cap, ratio))
    if choice.dtype == "bfloat16":
        assert flags & set(NATIVE_BF16_FLAGS)
        assert aten is None or aten.startswith("AVX512")
        assert (
            cap is None
            or cap == "ALL"
            or ONEDNN_ISAS.index(cap) >= (ONEDNN_ISAS.index("AVX512_CORE_BF16"))
        )
        assert ratio is None or ratio <= CALIBRATION_SLACK
    else:
        assert choice.dtype == "float32"
        assert native_bf16_block(CpuInfo(flags, aten, cap, ratio)) is not None


def test_cuda_choice() -> None:
    assert choose_cuda_dtype(True).dtype == "bfloat16"
    assert choose_cuda_dtype(False, "Tesla T4").reason == "float16: Tesla T4 has no bf16"


def test_device_auto() -> None:
    assert choose_device("auto", cuda_available=True) == "cuda"
    assert choose_device("auto", cuda_available=False) == "cpu"
    assert choose_device("cpu", cuda_available=True) == "cpu"


def test_cpu_flags_reads_proc_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx avx2 fma\nbugs\t\t: spectre\n")
    assert cpu_flags(info) == frozenset({"fpu", "avx", "avx2", "fma"})


def test_cpu_flags_falls_back_to_torch_queries(tmp_path: Path) -> None:
    class FakeCpu:
        @staticmethod
        def _is_avx2_supported() -> bool:
            return True

        @staticmethod
        def _is_avx512_bf16_supported() -> bool:
            return False

    class FakeTorch:
        cpu = FakeCpu()

    assert cpu_flags(tmp_path / "missing", torch=FakeTorch()) == frozenset({"avx2"})


def test_onednn_cap_reads_both_names() -> None:
    assert onednn_cap({"ONEDNN_MAX_CPU_ISA": "AVX2"}) == "AVX2"
    assert onednn_cap({"DNNL_MAX_CPU_ISA": "AVX512_CORE"}) == "AVX512_CORE"
    assert onednn_cap({}) is None
