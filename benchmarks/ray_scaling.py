"""Ray Serve scale-out (issue 13): replicas with fan-out, cross-request batching, the real model.

    python benchmarks/ray_scaling.py replicas   # (a) mock, fixed forward latency: 1, 2, 4 replicas
    python benchmarks/ray_scaling.py batching   # (b) 8 tuning jobs on one replica, batching off/on
    python benchmarks/ray_scaling.py real       # (c) the embedded model at 1 and 2 replicas
    python benchmarks/ray_scaling.py all        # or any several parts: replicas batching

Everything runs on one local Ray started here, behind Ray Serve's HTTP proxy, with the
ordinary :class:`bbt.Client`. The mock stands in for a GPU model with a fixed latency
per forward pass (``compute_ms``, 150 ms by default): a merged batch (batching on) pays it
once, as a GPU does for batches under its token budget; that is the best case of batching,
and the figures say so.

(a) One population (``--popsize`` prompts on ``--texts`` texts) per generation, fanned out
    by the client into ``--chunks`` requests (``max_concurrency``); batching off in the
    replicas, so each chunk is one forward pass. Median generation time per replica count.
(b) ``--jobs`` tuning jobs (``bbt.tuner.tune`` on the mock task, each its own k-shot
    sample and seed) at once against one replica, batching off and on: total sequences/s
    and each job's median generation time.
(c) The embedded default model (MiniLM): 1 replica with 2 torch threads against 2 replicas
    with 1 thread each, fan-out 2, on this machine's 2 cores.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import socket
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import _common
import numpy as np

from bbt.client import Client
from bbt.server.mock import (
    MOCK_MASK_TOKEN,
    MOCK_TEMPLATE,
    MOCK_VERBALIZER,
    MockBackend,
    sample_mock_dataset,
)
from bbt.server.ray_serve import APP_NAME, BackendSpec, ReplicaOptions, build_app, require_ray


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    have = set(text.split())
    return " ".join(f for f in wanted if f in have) or "none of avx2/avx512f/amx"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One local Ray for the whole run; :meth:`deploy` replaces the bbt app each time."""

    def __init__(self, num_cpus: int) -> None:
        self.ray, self.serve = require_ray()
        self.ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)
        self.port = _free_port()
        self.serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        self.url = f"http://127.0.0.1:{self.port}"

    def deploy(self, spec: BackendSpec, options: ReplicaOptions) -> float:
        """Deploy and wait until every replica is up; seconds it took."""
        t0 = time.perf_counter()
        with contextlib.suppress(Exception):  # nothing deployed yet
            self.serve.delete(APP_NAME)
        self.serve.run(build_app(spec, options), name=APP_NAME, route_prefix="/")
        return time.perf_counter() - t0

    def close(self) -> None:
        self.serve.shutdown()
        self.ray.shutdown()


def _mock_texts(n: int, seed: int = 0) -> list[str]:
    pairs = sample_mock_dataset(n, seed)
    return [MOCK_TEMPLATE.format(text=t, mask=MOCK_MASK_TOKEN) for t, _ in pairs]


def _generations(
    client: Client, prompts: Any, texts: list[str], cand: list[int], g: int
) -> list[float]:
    client.logits(prompts, texts, cand)  # warm-up: connections, first request per replica
    times = []
    for _ in range(g):
        t0 = time.perf_counter()
        client.logits(prompts, texts, cand)
        times.append(time.perf_counter() - t0)
    return times


def part_replicas(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    h = args.hidden
    mock = MockBackend(hidden_size=h)
    ids, _ = mock.tokenize(list(MOCK_VERBALIZER))
    cand = [i[0] for i in ids]
    texts = _mock_texts(args.texts)
    rng = np.random.default_rng(0)
    std = mock.info.embedding_std
    prompts = (rng.standard_normal((args.popsize, args.n, h)) * std).astype(np.float32)
    spec = BackendSpec("mock", {"hidden_size": h, "compute_ms": args.latency_ms})
    rows = []
    print(
        f"\n(a) replicas: mock, {args.latency_ms:g} ms per forward pass, population "
        f"{args.popsize} x {args.texts} texts, fan-out {args.chunks}, batching off"
    )
    print(f"{'replicas':>8} {'fan-out':>7} {'median gen (ms)':>16} {'speed-up':>9}")
    # Speed-up against 1 replica with the same fan-out (the same chunks, one after another).
    one_replica: dict[int, float] = {}
    configs = [(1, 1), *[(r, args.chunks) for r in args.replica_counts]]
    for replicas, fan in configs:
        # One request per replica at a time: Ray's router then puts each chunk on a free
        # replica (with more slots, chunks arriving together can land on the same one).
        opts = ReplicaOptions(
            replicas=replicas, num_cpus=0.25, batching=False, max_ongoing_requests=1
        )
        cluster.deploy(spec, opts)
        with Client(cluster.url, env_file=None, max_concurrency=fan, timeout=120) as client:
            times = _generations(client, prompts, texts, cand, args.generations)
        med = statistics.median(times)
        base = one_replica.setdefault(fan, med)
        rows.append({"replicas": replicas, "fan_out": fan, "gen_s": times, "median_s": med})
        print(f"{replicas:>8} {fan:>7} {med * 1e3:>16.0f} {base / med:>8.2f}x")
    return {"latency_ms": args.latency_ms, "rows": rows}


def _tuning_job(
    url: str, k: int, args: argparse.Namespace, gate: threading.Barrier
) -> tuple[list[float], int]:
    """One tuning job (seed k, its own k-shot sample): per-generation seconds, sequences."""
    from bbt.tuner import Example, TuneConfig, get_preset, sample_k_shot, tune

    examples = [Example({"text": t}, y) for t, y in sample_mock_dataset(400, 0)]
    train, dev = sample_k_shot(examples, 16, k, 2)
    cfg = TuneConfig(
        n_tokens=args.n,
        dim=50,
        popsize=args.popsize,
        budget=args.job_generations * args.popsize,
        eval_every=10**6,
        eval_initial=False,
        seed=k,
    )
    stamps: list[float] = []
    with Client(url, env_file=None, timeout=300) as client:
        client.model_info()
        gate.wait()
        # Generation to generation: the set-up before the first one is not a generation.
        tune(
            client,
            get_preset("mock"),
            train,
            dev,
            cfg,
            callbacks=[lambda _r: stamps.append(time.perf_counter())],
        )
        return [b - a for a, b in itertools.pairwise(stamps)], client.usage.sequences


def part_batching(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    spec = BackendSpec("mock", {"hidden_size": args.hidden, "compute_ms": args.latency_ms})
    out: dict[str, Any] = {}
    print(
        f"\n(b) batching: {args.jobs} tuning jobs at once on 1 replica, mock with "
        f"{args.latency_ms:g} ms per forward pass, population {args.popsize}, "
        f"{args.job_generations} generations each"
    )
    print(f"{'batching':>8} {'seq/s total':>12}  median generation per job (ms)")
    for batching in (False, True):
        opts = ReplicaOptions(
            replicas=1, num_cpus=0.5, batching=batching, batch_token_budget=args.batch_budget
        )
        cluster.deploy(spec, opts)
        gate = threading.Barrier(args.jobs)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.jobs) as pool:
            futures = [
                pool.submit(_tuning_job, cluster.url, k, args, gate) for k in range(args.jobs)
            ]
            results = [f.result() for f in futures]
        wall = time.perf_counter() - t0
        meds = [statistics.median(gens) * 1e3 for gens, _ in results]
        total = sum(seq for _, seq in results)
        label = "on" if batching else "off"
        out[label] = {
            "wall_s": wall,
            "sequences": total,
            "seq_per_s": total / wall,
            "median_gen_ms_per_job": meds,
        }
        print(f"{label:>8} {total / wall:>12.0f}  {' '.join(f'{m:.0f}' for m in meds)}")
    return out


def part_real(cluster: Cluster, args: argparse.Namespace) -> dict[str, Any]:
    from bbt.tuner import get_preset

    head = "auto"
    local = _common.load_backend(args.dtype, 1, head)
    info = local.info
    ids, _ = local.tokenize(list(get_preset("sst2").words))
    cand = [i[0] for i in ids]
    texts = _common.render(
        "sst2", _common.sample_rows("sst2", args.texts, seed=13), info.mask_token
    )
    rng = np.random.default_rng(0)
    prompts = (
        rng.standard_normal((args.popsize, args.n, info.hidden_size)) * info.embedding_std
    ).astype(np.float32)
    local.close()
    print(
        f"\n(c) the embedded model ({args.dtype}), population {args.popsize} x {args.texts} "
        f"SST-2 texts, n={args.n}, on {os.cpu_count()} cores"
    )
    print(
        f"{'replicas':>8} {'threads each':>12} {'fan-out':>7} {'median gen (s)':>15} {'seq/s':>7}"
    )
    rows = []
    for replicas, threads, fan in ((1, 2, 1), (1, 2, 2), (2, 1, 2)):
        spec = BackendSpec("hf", {"dtype": args.dtype, "num_threads": threads, "head": head})
        opts = ReplicaOptions(replicas=replicas, num_cpus=threads, batching=True)
        deploy_s = cluster.deploy(spec, opts)
        with Client(cluster.url, env_file=None, max_concurrency=fan, timeout=600) as client:
            times = _generations(client, prompts, texts, cand, args.real_generations)
        med = statistics.median(times)
        seq = args.popsize * args.texts / med
        rows.append(
            {
                "replicas": replicas,
                "threads": threads,
                "fan_out": fan,
                "gen_s": times,
                "median_s": med,
                "deploy_s": deploy_s,
            }
        )
        print(f"{replicas:>8} {threads:>12} {fan:>7} {med:>15.2f} {seq:>7.0f}")
    return {"dtype": args.dtype, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("part", nargs="+", choices=["replicas", "batching", "real", "all"])
    ap.add_argument("--latency-ms", type=float, default=150.0, help="mock forward latency")
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--texts", type=int, default=32)
    ap.add_argument("--n", type=int, default=50, help="prompt tokens")
    ap.add_argument("--hidden", type=int, default=128, help="mock hidden size")
    ap.add_argument("--chunks", type=int, default=4, help="(a) client fan-out")
    ap.add_argument("--replica-counts", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--generations", type=int, default=8, help="(a) timed generations")
    ap.add_argument("--jobs", type=int, default=8, help="(b) concurrent tuning jobs")
    ap.add_argument("--job-generations", type=int, default=8, help="(b) generations per job")
    ap.add_argument(
        "--batch-budget",
        type=int,
        default=1 << 20,
        help="(b) padded tokens per merged batch (the mock pays one pass whatever its size)",
    )
    ap.add_argument("--real-generations", type=int, default=3, help="(c) timed generations")
    ap.add_argument("--dtype", default="auto", help="(c) compute dtype of the real model")
    ap.add_argument("--ray-cpus", type=int, default=4, help="logical CPUs of the local Ray")
    ap.add_argument("--out-dir", type=Path, default=_common.RESULTS)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, for a quick check")
    args = ap.parse_args(argv)
    if args.smoke:
        args.popsize, args.texts, args.n, args.generations = 4, 4, 5, 2
        args.jobs, args.job_generations, args.real_generations = 2, 2, 1
        args.replica_counts, args.latency_ms = [1, 2], 20.0
    print(f"CPU flags: {cpu_flags()}; {os.cpu_count()} cores; python {sys.version.split()[0]}")
    cluster = Cluster(args.ray_cpus)
    record: dict[str, Any] = {"cpu_flags": cpu_flags(), "args": vars(args) | {"out_dir": None}}
    try:
        parts = {"replicas", "batching", "real"} if "all" in args.part else set(args.part)
        if "replicas" in parts:
            record["replicas"] = part_replicas(cluster, args)
        if "batching" in parts:
            record["batching"] = part_batching(cluster, args)
        if "real" in parts:
            record["real"] = part_real(cluster, args)
    finally:
        cluster.close()
    name = "ray_scaling_" + "_".join(args.part) + ("_smoke" if args.smoke else "")
    _common.write_result(name, record, args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
