"""CPU compute setups for the MiniLM encoder, side by side, at the demo's shape.

One BBT call of ``make demo`` is P = 20 prompts (n = 10 tokens) on B = 64 AG News texts
(``examples/data/agnews.tsv`` in the agnews template). Each setup scores the same call
through :meth:`HFBackend.logits` (the shipped head, the backend's own batching); only the
encoder's compute changes:

- ``fp32``: float32, SDPA attention (transformers' default), token budget 16384: the baseline;
- ``eager-attn``: float32 with transformers' eager attention;
- ``budget4096``: float32, chunks of at most 4,096 padded tokens (less padding);
- ``bf16``: bfloat16 weights (native on AVX-512 BF16 / AMX, emulated under an AVX2 cap);
- ``ort``: ONNX Runtime, float32 (the encoder exported with ``torch.onnx.export``);
- ``ort-int8``: ONNX Runtime with dynamic int8 quantisation of the MatMuls (lossy);
- ``torch-int8``: ``torch.ao.quantization.quantize_dynamic`` on the Linear layers (lossy;
  deprecated in torch 2.13); ``compile``: ``torch.compile`` (inductor). Not in the default
  list: ``--setups`` names them.

Rounds are interleaved (every setup once per round), so a shared machine's load hits every
setup alike; the figure is the median over rounds, and ratios are to ``fp32`` of the same run.
To emulate an AVX2-only CPU on a newer one, run it again under::

    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 \\
        FBGEMM_ENABLE_INSTRUCTIONS=AVX2

(ONNX Runtime has no such switch: its kernels still use AVX-512 there.)

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 .venv/bin/python \\
        benchmarks/cpu_engines.py --threads 2 --batch 64 32
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import _machine  # noqa: E402
from _machine import write_json  # noqa: E402

DEFAULT_SETUPS = ["fp32", "eager-attn", "budget4096", "bf16", "ort", "ort-int8"]
ALL_SETUPS = [*DEFAULT_SETUPS, "torch-int8", "compile"]
EMULATION_VARS = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "FBGEMM_ENABLE_INSTRUCTIONS",
)


def cpu_flags() -> list[str]:
    return _machine.cpu_flags(("avx2", "avx512f", "avx512_bf16", "amx_bf16"))


def demo_texts(batch: int) -> list[str]:
    from bbt.tuner.tasks import get_preset

    task = get_preset("agnews")
    with (ROOT / "examples" / "data" / "agnews.tsv").open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [task.render({"text": r["text"]}, "[MASK]") for r in rows[:batch]]


class _OrtEncoder:
    """Stands in for the torch encoder: ``(inputs_embeds, attention_mask) -> hidden``."""

    def __init__(self, session: Any, torch: Any) -> None:
        self._session = session
        self._torch = torch

    def __call__(self, inputs_embeds: Any, attention_mask: Any, **_: Any) -> Any:
        feed = {
            "inputs_embeds": inputs_embeds.float().numpy(),
            "attention_mask": attention_mask.numpy(),
        }
        out = self._session.run(None, feed)[0]
        return SimpleNamespace(last_hidden_state=self._torch.from_numpy(out))


def export_onnx(encoder: Any, torch: Any, path: Path) -> None:
    class Wrapped(torch.nn.Module):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, inputs_embeds: Any, attention_mask: Any) -> Any:
            return self.encoder(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(attention_mask),
            ).last_hidden_state

    x = torch.randn(3, 17, encoder.config.hidden_size)
    mask = torch.ones(3, 17, dtype=torch.long)
    mask[1, 11:] = 0
    axes = {0: "sequences", 1: "length"}
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapped().eval(),
            (x, mask),
            str(path),
            input_names=["inputs_embeds", "attention_mask"],
            output_names=["hidden"],
            dynamic_axes={"inputs_embeds": axes, "attention_mask": axes, "hidden": axes},
            opset_version=17,
            dynamo=False,
        )


def ort_session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def set_attention(encoder: Any, impl: str) -> None:
    setter = getattr(encoder, "set_attn_implementation", None)
    if callable(setter):
        setter(impl)
    else:  # older transformers read the config at each forward
        encoder.config._attn_implementation = impl


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="CPU compute setups for the MiniLM encoder.")
    ap.add_argument("--population", type=int, default=20, help="P")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 32], help="B (one or more)")
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--setups", default=",".join(DEFAULT_SETUPS), help=",".join(ALL_SETUPS))
    ap.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    args = ap.parse_args(argv)
    setups = [s for s in args.setups.split(",") if s]
    unknown = sorted(set(setups) - set(ALL_SETUPS))
    if unknown or "fp32" not in setups:
        ap.error(f"--setups must include fp32 and name only {', '.join(ALL_SETUPS)}")
    if args.smoke:
        args.population, args.batch, args.rounds = 2, [3], 1

    import torch

    from bbt.server.hf import HFBackend

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    emulated = {k: os.environ[k] for k in EMULATION_VARS if k in os.environ}
    started = time.perf_counter()
    fp32 = HFBackend(dtype="float32", num_threads=args.threads)
    backends: dict[str, Any] = {"fp32": fp32}
    prepare: dict[str, float] = {}
    skipped: dict[str, str] = {}
    base_encoder = fp32._encoder
    default_attention = str(base_encoder.config._attn_implementation)
    encoders: dict[str, Any] = {}
    for name in setups:
        t0 = time.perf_counter()
        try:
            if name == "bf16":
                backends[name] = HFBackend(dtype="bfloat16", num_threads=args.threads)
            elif name in ("ort", "ort-int8"):
                import onnxruntime  # noqa: F401 - fail early with a clear skip reason

                tmp = Path(tempfile.mkdtemp(prefix="bbt-onnx-"))
                plain = tmp / "encoder.onnx"
                if not plain.exists():
                    export_onnx(base_encoder, torch, plain)
                path = plain
                if name == "ort-int8":
                    from onnxruntime.quantization import QuantType, quantize_dynamic

                    path = tmp / "encoder_int8.onnx"
                    quantize_dynamic(str(plain), str(path), weight_type=QuantType.QInt8)
                encoders[name] = _OrtEncoder(ort_session(path, args.threads), torch)
            elif name == "torch-int8":
                import warnings

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    encoders[name] = torch.ao.quantization.quantize_dynamic(
                        base_encoder, {torch.nn.Linear}, dtype=torch.qint8
                    )
            elif name == "compile":
                encoders[name] = torch.compile(base_encoder, dynamic=True)
        except Exception as exc:  # record why a candidate could not run
            skipped[name] = f"{type(exc).__name__}: {str(exc)[:200]}"
            print(f"skip {name}: {skipped[name]}", flush=True)
        prepare[name] = time.perf_counter() - t0
    setups = [s for s in setups if s not in skipped]
    print(
        f"set-up {time.perf_counter() - started:.1f}s; threads {args.threads}; "
        f"CPU flags {' '.join(cpu_flags())}; emulation {emulated or 'none'}",
        flush=True,
    )

    ids, _ = fp32.tokenize(["world", "sports", "business", "tech"])
    cand = np.array([i[0] for i in ids], dtype=np.int64)
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    for batch in args.batch:
        texts = demo_texts(batch)
        prompts = (
            rng.standard_normal((args.population, args.n_tokens, fp32.info.hidden_size))
            * fp32.info.embedding_std
        ).astype(np.float32)
        work = args.population * len(texts)

        def run(name: str, p: Any, t: list[str]) -> np.ndarray[Any, Any]:
            backend = backends.get(name, fp32)
            fp32._encoder = encoders.get(name, base_encoder)
            if name == "eager-attn":
                set_attention(base_encoder, "eager")
            backend.token_budget = 4096 if name == "budget4096" else 16384
            try:
                out, _ = backend.logits(p, t, cand)
            finally:
                fp32._encoder = base_encoder
                set_attention(base_encoder, default_attention)
                backend.token_budget = 16384
            return np.asarray(out)

        times: dict[str, list[float]] = {s: [] for s in setups}
        outs: dict[str, np.ndarray[Any, Any]] = {}
        for name in setups:  # warm-up: first calls pick kernels; compile traces here
            t0 = time.perf_counter()
            run(name, prompts[:2], texts[:4])
            prepare[f"{name}@warm{batch}"] = time.perf_counter() - t0
        for _ in range(args.rounds):
            for name in setups:
                t0 = time.perf_counter()
                outs[name] = run(name, prompts, texts)
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["fp32"])
        shape = f"P{args.population}xB{batch}"
        results[shape] = {}
        print(f"\n{shape} ({work} sequences), median of {args.rounds} interleaved rounds:")
        for name in setups:
            med = statistics.median(times[name])
            diff = float(np.abs(outs[name] - outs["fp32"]).max())
            agree = float((outs[name].argmax(-1) == outs["fp32"].argmax(-1)).mean())
            results[shape][name] = {
                "seconds": times[name],
                "sequences_per_second": work / med,
                "speedup_vs_fp32": base / med,
                "max_abs_diff_vs_fp32": diff,
                "argmax_agreement_vs_fp32": agree,
            }
            print(
                f"  {name:>11}: {work / med:7.1f} sequences/s  {base / med:5.2f}x fp32  "
                f"({med:.2f}s; max |logit diff| {diff:.1e}; argmax agrees {agree:.1%})",
                flush=True,
            )
    record = {
        "command": " ".join(["benchmarks/cpu_engines.py", *(argv or sys.argv[1:])]),
        "emulation": emulated,
        "cpu_flags": cpu_flags(),
        "args": vars(args),
        "prepare_seconds": prepare,
        "skipped": skipped,
        "machine": {"platform": platform.platform(), "load": os.getloadavg()},
        "results": results,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    tag = "avx2" if emulated else "native"
    write_json(
        Path(args.out_dir) / f"cpu_engines_{tag}{'_smoke' if args.smoke else ''}.json", record
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
