"""What one generation costs with deep prompts (BBTv2) against shallow ones (BBT).

One process, one model (the embedded default, MiniLM, 6 layers), the same population of
``--popsize`` candidates on the same k-shot AG News training texts: the server's forward
passes for shallow prompts [P, n, H] and for deep prompts [P, L, n, H], interleaved
``--repeats`` times (median of each; the ratio is the robust figure on a shared machine),
the client's projection for each method, and the request-body bytes per candidate (the
client's own encoding, float32 and float16 on the wire).

Bytes up per candidate, measured (``--wire-generations`` > 0): the client's own usage
counters (``bytes_sent`` / ``calls``) over that many generations of each method through
the HTTP client (``bbt.testing.CoreTransport`` into the app's core on the same backend):
BBT over a projection session, BBTv2 over a deep session (protocol 1.5: the varying
layer's z per candidate, the held layers' z once a request), and both with full prompts.
The session open (recipes, p0) is counted apart: it is paid once a run.

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 .venv/bin/python benchmarks/bbtv2_cost.py
    # bytes only (no timing repeats):
    ... benchmarks/bbtv2_cost.py --repeats 0 --wire-generations 2

Prints a table and writes ``benchmarks/results/bbtv2_cost.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import (  # noqa: E402
    args_record,
    cpu_flags,
    default_dtype,
    sample_kshot,
    to_examples,
    write_result,
)

from bbt.protocol import encoded_size  # noqa: E402
from bbt.tuner import InitialPrompt, TuneConfig, get_preset  # noqa: E402
from bbt.tuner.bbtv2 import make_tuner  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--dim", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--name", default="bbtv2_cost")
    ap.add_argument("--wire-generations", type=int, default=2)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args(argv)
    if args.smoke:
        args.popsize, args.n_tokens, args.dim, args.repeats = 2, 2, 4, 1
        args.wire_generations = min(args.wire_generations, 1)
        args.name = "bbtv2_cost_smoke"
    args.dtype = args.dtype or default_dtype()

    from bbtv2_vs_bbt import bytes_per_candidate

    from bbt.client import LocalClient
    from bbt.server.hf import HFBackend, describe

    backend = HFBackend(dtype=args.dtype, num_threads=args.threads)
    service = LocalClient(backend)
    info = service.model_info()
    task = get_preset("agnews")
    shots = 1 if args.smoke else 16
    train_rows, dev_rows = sample_kshot("agnews", shots, 0)
    train = to_examples("agnews", train_rows, task)
    dev = to_examples("agnews", dev_rows, task)
    tuners = {}
    for method in ("bbt", "bbtv2"):
        cfg = TuneConfig(n_tokens=args.n_tokens, dim=args.dim, popsize=args.popsize, method=method)
        tuners[method] = make_tuner(
            service, task, train, dev, cfg, initial_prompt=InitialPrompt.parse("vocab:1000")
        )
    measured = wire_bytes(backend, task, train, dev, args) if args.wire_generations > 0 else {}
    for name, row in measured.items():
        print(
            f"measured bytes up / candidate, {name}: {row['per_candidate']:,.0f} "
            f"(session open {row['open_bytes']:,} B once)"
        )
    if args.repeats < 1:
        write_result(
            args.name, {"args": args_record(args), "measured_bytes": measured}, args.out_dir
        )
        return 0
    pops = {m: t.ask() for m, t in tuners.items()}
    prompts = {m: tuners[m].prompts(pops[m]) for m in tuners}
    texts = tuners["bbt"].train_texts
    cand = tuners["bbt"].candidate_ids
    for m in tuners:  # warm-up
        service.logits(prompts[m][:1], texts[:2], cand)
    server: dict[str, list[float]] = {"bbt": [], "bbtv2": []}
    client: dict[str, list[float]] = {"bbt": [], "bbtv2": []}
    for _ in range(args.repeats):
        for m, t in tuners.items():
            t0 = time.perf_counter()
            t.prompts(pops[m])
            client[m].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            service.logits(prompts[m], texts, cand)
            server[m].append(time.perf_counter() - t0)
    med = {m: statistics.median(v) for m, v in server.items()}
    proj = {m: statistics.median(v) for m, v in client.items()}
    wire = {
        m: {dt: bytes_per_candidate(info, t, args.popsize, dt) for dt in ("float32", "float16")}
        for m, t in tuners.items()
    }
    # A session sends z (d numbers, base64 float32) instead of the prompt: per layer for a
    # whole deep candidate, or only the active layer's d (the held ones once per generation).
    session = {
        "bbt_z": encoded_size((args.dim,), "float32"),
        "bbtv2_all_layers_z": encoded_size((info.num_layers, args.dim), "float32"),
        "bbtv2_active_layer_z": encoded_size((args.dim,), "float32"),
    }
    ratio = med["bbtv2"] / med["bbt"]
    print(
        f"MiniLM (L={info.num_layers}, H={info.hidden_size}), {args.dtype}, "
        f"{args.threads} thread(s); P={args.popsize} x B={len(texts)} AG News texts, "
        f"n={args.n_tokens}, d={args.dim}; median of {args.repeats}; CPU flags "
        f"{' '.join(cpu_flags())}"
    )
    print(
        "| method | server s / generation | client projection ms / generation | "
        "bytes up / candidate f32 | f16 |"
    )
    print("|---|---:|---:|---:|---:|")
    for m in tuners:
        print(
            f"| {m} | {med[m]:.2f} | {1000 * proj[m]:.1f} | {wire[m]['float32']:,.0f} | "
            f"{wire[m]['float16']:,.0f} |"
        )
    print(f"deep / shallow server time per generation: {ratio:.3f}")
    print(
        "with a session (z on the wire, base64 float32): "
        + ", ".join(f"{k} {v:,} B" for k, v in session.items())
    )
    write_result(
        args.name,
        {
            "args": args_record(args),
            "backend": describe(backend),
            "cpu_flags": cpu_flags(),
            "server_seconds": server,
            "client_seconds": client,
            "server_median": med,
            "client_median": proj,
            "ratio_deep_over_shallow": ratio if math.isfinite(ratio) else None,
            "bytes_per_candidate": wire,
            "session_bytes_per_candidate": session,
            "measured_bytes": measured,
        },
        args.out_dir,
    )
    return 0


def wire_bytes(
    backend: Any, task: Any, train: Any, dev: Any, args: argparse.Namespace
) -> dict[str, dict[str, float]]:
    """Bytes up per candidate from the HTTP client's usage counters, per method and
    sessions mode, over ``args.wire_generations`` generations (no dev check falls in)."""
    from bbt.client import Client
    from bbt.server import ServerSettings
    from bbt.server.local import ServiceCore
    from bbt.testing import CoreTransport

    core = ServiceCore(backend, ServerSettings(api_keys=[]))
    out: dict[str, dict[str, float]] = {}
    for method, sessions in (("bbt", "on"), ("bbtv2", "on"), ("bbt", "off"), ("bbtv2", "off")):
        cfg = TuneConfig(
            n_tokens=args.n_tokens,
            dim=args.dim,
            popsize=args.popsize,
            method=method,
            sessions=sessions,
            budget=10**6,
            eval_every=10**6,
            eval_initial=False,
        )
        with Client("http://bbt.bench", transport=CoreTransport(core), env_file=None) as client:
            start = client.usage.copy()
            tuner = make_tuner(
                client, task, train, dev, cfg, initial_prompt=InitialPrompt.parse("vocab:1000")
            )
            opened = client.usage.copy()
            for _ in range(args.wire_generations):
                tuner.step()
            used = client.usage - opened
            tuner.close()
        out[f"{method} sessions={sessions}"] = {
            "per_candidate": used.bytes_sent / used.calls,
            "open_bytes": (opened - start).bytes_sent,
            "calls": used.calls,
            "requests": used.requests,
        }
    return out


if __name__ == "__main__":
    raise SystemExit(main())
