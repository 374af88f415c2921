"""Which compute setup to run a model in: the ``dtype="auto"`` / ``device="auto"`` rule.

bfloat16 is only fast where the hardware runs it: on a CPU without native bf16 dot products
(AVX2-only: most laptops and many cloud VMs) torch emulates it, about 5.6x *slower* than
float32 (MiniLM, 64 sequences x 70 tokens, two threads: 1.20 s vs 6.8 s). So the rule is:

- CUDA: bfloat16 where the GPU supports it, else float16.
- CPU: bfloat16 only where the CPU has native bf16 (``avx512_bf16`` or ``amx_bf16``) *and*
  nothing caps the kernels below it (``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA`` under
  ``AVX512_CORE_BF16``, torch's ATen capability under AVX512, e.g. ``ATEN_CPU_CAPABILITY=avx2``),
  and a short start-up check that a bf16 matmul is not slower than float32 agrees; else
  float32.

:func:`choose_dtype` is pure (flags in, choice out) so it can be tested over fake CPUs;
:func:`probe_cpu` reads the real machine. Every choice comes with a one-line reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: CPU flags (as ``/proc/cpuinfo`` spells them) that mean native bf16 dot products.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

#: oneDNN's ISA names from weakest to strongest (``ONEDNN_MAX_CPU_ISA``); bf16 compute is
#: native from ``AVX512_CORE_BF16`` on (``AVX2_VNNI_2`` only converts to and from bf16).
ONEDNN_ISAS = (
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
    "AVX512_CORE_BF16",
    "AVX10_1_512",
    "AVX512_CORE_FP16",
    "AVX10_1_512_AMX",
    "AVX512_CORE_AMX",
    "AVX10_1_512_AMX_FP16",
    "AVX512_CORE_AMX_FP16",
    "AVX10_2_512",
    "AVX10_2_512_AMX_2",
)
_BF16_ISA = ONEDNN_ISAS.index("AVX512_CORE_BF16")

#: A bf16 matmul this much slower than float32 at start-up means bf16 is not really native.
CALIBRATION_SLACK = 1.25


@dataclass(frozen=True)
class CpuInfo:
    """What decides the CPU dtype. ``flags``: CPU feature flags (``/proc/cpuinfo`` names).
    ``aten_capability``: torch's vector ISA (``torch.backends.cpu.get_cpu_capability()``:
    ``AVX512``, ``AVX2``, ``DEFAULT``, ...), ``None`` if unknown. ``onednn_max_isa``: the
    ``ONEDNN_MAX_CPU_ISA`` (or ``DNNL_MAX_CPU_ISA``) cap, ``None`` if unset.
    ``bf16_over_fp32``: measured time of a bf16 matmul over a float32 one (``None``: not
    measured)."""

    flags: frozenset[str]
    aten_capability: str | None = None
    onednn_max_isa: str | None = None
    bf16_over_fp32: float | None = None


@dataclass(frozen=True)
class Choice:
    """A resolved compute setup and why, e.g. ``float32: CPU has no native bf16 (avx2)``."""

    dtype: str
    device: str
    reason: str


def _isa_summary(flags: frozenset[str]) -> str:
    for name in ("amx_bf16", "avx512_bf16", "avx512f", "avx2", "avx"):
        if name in flags:
            return f"{name} only"
    return "no AVX"


def native_bf16_block(cpu: CpuInfo) -> str | None:
    """Why bf16 would be emulated on ``cpu`` (a short phrase), or ``None`` if it is native."""
    native = [f for f in NATIVE_BF16_FLAGS if f in cpu.flags]
    if not native:
        return f"CPU has no native bf16 ({_isa_summary(cpu.flags)})"
    if cpu.onednn_max_isa is not None:
        cap = cpu.onednn_max_isa.strip().upper()
        # ALL / DEFAULT mean no cap; an unknown name is treated as a cap we cannot rank.
        if cap not in ("ALL", "DEFAULT", "") and (
            cap not in ONEDNN_ISAS or ONEDNN_ISAS.index(cap) < _BF16_ISA
        ):
            return f"oneDNN capped at {cap} (ONEDNN_MAX_CPU_ISA) below native bf16"
    if cpu.aten_capability is not None and not cpu.aten_capability.upper().startswith("AVX512"):
        return f"torch kernels capped at {cpu.aten_capability} (ATEN_CPU_CAPABILITY)"
    if cpu.bf16_over_fp32 is not None and cpu.bf16_over_fp32 > CALIBRATION_SLACK:
        return (
            f"bf16 flags present ({', '.join(native)}) but a bf16 matmul ran "
            f"{cpu.bf16_over_fp32:.1f}x slower than float32 at start-up"
        )
    return None


def choose_cpu_dtype(cpu: CpuInfo) -> Choice:
    """bfloat16 where ``cpu`` runs it natively, else float32 (never emulated bf16)."""
    block = native_bf16_block(cpu)
    if block is not None:
        return Choice("float32", "cpu", f"float32: {block}")
    native = ", ".join(f for f in NATIVE_BF16_FLAGS if f in cpu.flags)
    measured = (
        f"; bf16 matmul {1 / cpu.bf16_over_fp32:.1f}x float32's speed" if cpu.bf16_over_fp32 else ""
    )
    return Choice("bfloat16", "cpu", f"bfloat16: CPU has native bf16 ({native}){measured}")


def choose_cuda_dtype(bf16_supported: bool, name: str = "GPU") -> Choice:
    """bfloat16 on a GPU that supports it, else float16."""
    if bf16_supported:
        return Choice("bfloat16", "cuda", f"bfloat16: {name} supports bf16")
    return Choice("float16", "cuda", f"float16: {name} has no bf16")


def choose_device(requested: str, cuda_available: bool) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; others unchanged."""
    if requested == "auto":
        return "cuda" if cuda_available else "cpu"
    return requested


# ---------------------------------------------------------------------- the real machine


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo"), torch: Any = None) -> frozenset[str]:
    """CPU feature flags: ``/proc/cpuinfo`` where readable, else torch's own cpuinfo queries."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    found: set[str] = set()
    cpu = getattr(torch, "cpu", None)
    queries = {
        "avx2": "_is_avx2_supported",
        "avx512f": "_is_avx512_supported",
        "avx512_bf16": "_is_avx512_bf16_supported",
        "amx_bf16": "_is_amx_tile_supported",  # every CPU with AMX tiles has AMX-BF16
    }
    for flag, query in queries.items():
        fn = getattr(cpu, query, None)
        try:
            if callable(fn) and fn():
                found.add(flag)
        except RuntimeError:  # pragma: no cover - a torch without the query
            continue
    return frozenset(found)


def onednn_cap(env: Mapping[str, str] | None = None) -> str | None:
    """The oneDNN ISA cap from the environment, if any."""
    env = os.environ if env is None else env
    for key in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        value = env.get(key)
        if value:
            return value
    return None


def calibrate_bf16(torch: Any, rounds: int = 3) -> float:
    """Time of a bf16 matmul over a float32 one of a transformer layer's shape (~0.1 s)."""
    gen = torch.Generator().manual_seed(0)
    a32 = torch.randn(256, 384, generator=gen)
    w32 = torch.randn(384, 1536, generator=gen)
    a16, w16 = a32.to(torch.bfloat16), w32.to(torch.bfloat16)

    def best(a: Any, w: Any) -> float:
        times = []
        with torch.inference_mode():
            torch.matmul(a, w)  # warm-up: first calls pick and JIT kernels
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(4):
                    torch.matmul(a, w)
                times.append(time.perf_counter() - t0)
        return min(times)

    return best(a16, w16) / max(best(a32, w32), 1e-9)


def probe_cpu(torch: Any, calibrate: bool = True) -> CpuInfo:
    """The real CPU's :class:`CpuInfo`; the matmul check runs only where flags say native."""
    flags = cpu_flags(torch=torch)
    try:
        capability: str | None = str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # pragma: no cover - older torch
        capability = None
    info = CpuInfo(flags=flags, aten_capability=capability, onednn_max_isa=onednn_cap())
    if calibrate and native_bf16_block(info) is None:
        info = CpuInfo(
            flags=flags,
            aten_capability=capability,
            onednn_max_isa=info.onednn_max_isa,
            bf16_over_fp32=calibrate_bf16(torch),
        )
    return info
