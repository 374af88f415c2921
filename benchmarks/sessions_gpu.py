"""End-to-end BBT generations over loopback HTTP, projection session against full prompt.

A real ``bbt serve`` stack in this process: the Hugging Face backend (default: the embedded
MiniLM; ``--model`` for another masked LM) on ``--device``, the protocol app under uvicorn
on a loopback port, and :class:`bbt.Client` talking HTTP to it, at paper scale (n = 50,
d = 500, P = 20, B = 32 SST-2 texts). Each generation is pycma's ask, the client's call
(full prompt: project locally and upload [P, n, H]; session: upload z [P, d]), the loss and
pycma's tell. Per mode it reports, as medians over the measured generations:

- ``generation``: the whole generation's wall time;
- ``request``: time inside HTTP requests (the server's share, network included);
- ``client``: bbt's own client work, the generation minus request and pycma;
- ``client_share``: client / generation;
- ``to_bare_forward``: generation / the bare model forward of the same work, i.e. the
  backend's ``logits`` on the same prompts with no HTTP, timed in the same run.

On CUDA the session's projection runs on the GPU (``torch_projector``). Goals (issue 10):
client share at most 10% and a generation within 1.3x the bare forward.

    python benchmarks/sessions_gpu.py --device cuda [--dtype float16] [--generations 20]
    python benchmarks/sessions_gpu.py --device cpu --smoke     # a quick check that it runs

Writes benchmarks/results/sessions_gpu_<device>.json (``--out`` to change).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _machine import write_json

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def _serve(app: Any) -> tuple[str, Callable[[], None]]:
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://127.0.0.1:{port}", stop


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda | cpu")
    ap.add_argument("--dtype", default="auto", help="the backend's compute dtype")
    ap.add_argument("--model", default=None, help="model directory (default: embedded MiniLM)")
    ap.add_argument("--generations", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--n-tokens", type=int, default=50)
    ap.add_argument("--dim", type=int, default=500)
    ap.add_argument("--population", type=int, default=20)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 2 generations")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.smoke:
        args.generations, args.warmup = 2, 1
        args.n_tokens, args.dim, args.population, args.batch = 4, 16, 4, 4
    if args.out is None:
        suffix = "_smoke" if args.smoke else ""
        args.out = RESULTS / f"sessions_gpu_{args.device}{suffix}.json"

    import cma

    from bbt.client import Client
    from bbt.protocol.projection import Projection, ProjectionRecipe
    from bbt.server.app import create_app
    from bbt.server.hf import HFBackend
    from bbt.server.settings import ServerSettings
    from bbt.tuner import cross_entropy, get_preset, load_examples

    backend = HFBackend(args.model, dtype=args.dtype, device=args.device)  # type: ignore[arg-type]
    info = backend.info
    task = get_preset("sst2")
    rows = load_examples(ROOT / "examples" / "data" / "sst2.tsv", task)[: args.batch]
    texts = [task.render(r.fields, info.mask_token) for r in rows]
    labels = np.asarray([r.label for r in rows])
    words = backend.tokenize([" " + w if not w.startswith(" ") else w for w in task.words])[0]
    cands = [ids[0] for ids in words]
    n, d, p = args.n_tokens, args.dim, args.population
    recipe = ProjectionRecipe(
        seed=0, n_tokens=n, hidden_size=info.hidden_size, dim=d, embedding_std=info.embedding_std
    )
    projection = Projection(recipe)
    p0 = np.zeros((n, info.hidden_size), np.float32)

    app = create_app(backend, ServerSettings(api_keys=[]))
    url, stop = _serve(app)
    inside = [0.0]
    try:
        client = Client(url, env_file=None, timeout=600)
        send = client._http.send

        def timed_send(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            try:
                return send(*a, **kw)
            finally:
                inside[0] += time.perf_counter() - t

        client._http.send = timed_send  # type: ignore[method-assign]
        session = client.open_session(recipe, p0, expected_fingerprint=None)
        es = {
            mode: cma.CMAEvolutionStrategy(
                np.zeros(d), 1.0, {"popsize": p, "seed": 1, "verbose": -9, "maxiter": 10**9}
            )
            for mode in ("full", "session")
        }
        rows_out: dict[str, list[dict[str, float]]] = {"full": [], "session": []}
        bare: list[float] = []
        for g in range(args.warmup + args.generations):
            for mode in ("full", "session"):
                inside[0] = 0.0
                t0 = time.perf_counter()
                pop = np.asarray(es[mode].ask())
                t_cma = time.perf_counter() - t0
                if mode == "full":
                    logits = client.logits(projection.project(pop, p0), texts, cands)
                else:
                    logits = client.session_logits(session, pop, texts, cands)
                loss = cross_entropy(logits, labels)
                t1 = time.perf_counter()
                es[mode].tell(list(pop), list(np.asarray(loss, dtype=float)))
                t_cma += time.perf_counter() - t1
                total = time.perf_counter() - t0
                if g >= args.warmup:
                    rows_out[mode].append(
                        {
                            "generation": total,
                            "request": inside[0],
                            "pycma": t_cma,
                            "client": total - inside[0] - t_cma,
                        }
                    )
            prompts = projection.project(np.asarray(es["full"].ask()), p0)
            t0 = time.perf_counter()
            backend.logits(prompts, texts, np.asarray(cands, dtype=np.int64))
            if g >= args.warmup:
                bare.append(time.perf_counter() - t0)
        client.close_session(session)
        client.close()
    finally:
        stop()
        backend.close()

    bare_ms = statistics.median(bare) * 1000
    result: dict[str, Any] = {
        "scale": {"n": n, "H": info.hidden_size, "d": d, "P": p, "B": len(texts)},
        "model": info.id,
        "device": args.device,
        "dtype": str(backend.compute_dtype),
        "generations": args.generations,
        "bare_forward_ms": round(bare_ms, 3),
        "modes": {},
        "machine": {"python": platform.python_version(), "numpy": np.__version__},
    }
    print(
        f"{info.id} on {args.device} ({backend.compute_dtype}), n={n}, d={d}, P={p}, "
        f"B={len(texts)}; bare forward {bare_ms:.1f} ms (median ms per generation):"
    )
    for mode, rows_ in rows_out.items():
        ms = {k: statistics.median(r[k] for r in rows_) * 1000 for k in rows_[0]}
        share = ms["client"] / ms["generation"]
        ratio = ms["generation"] / bare_ms
        result["modes"][mode] = {
            **{k: round(v, 3) for k, v in ms.items()},
            "client_share": round(share, 3),
            "to_bare_forward": round(ratio, 2),
        }
        print(
            f"  {mode:<8} generation {ms['generation']:8.1f}  request {ms['request']:8.1f}  "
            f"client {ms['client']:7.1f} ({share:.0%})  pycma {ms['pycma']:6.1f}  "
            f"{ratio:.2f}x bare forward"
        )
    write_json(args.out, result, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
