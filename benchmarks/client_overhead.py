"""Client-side cost of one BBT generation at paper scale, with a model that costs nothing.

Paper scale (Sun et al., ICML 2022): n = 50 prompt tokens, H = 1024 (RoBERTa-large),
d = 500, a population of P = 20, B = 32 training texts (SST-2, 16-shot), C = 2. The model is
a trivial backend that answers zeros instantly; it sits behind the real server core and is
reached through the real :class:`bbt.Client` over an in-process transport
(:class:`bbt.testing.CoreTransport`: no sockets), so everything bbt itself does per
generation is on the clock:

- ``projection``: p = A z + p0 for the population (``Tuner.prompts``);
- ``encoding``: the client's request planning (float32 -> base64 tensor, pydantic model,
  the pre-flight ``check_logits_request``) and JSON serialisation of the body;
- ``transport``: the in-process round trip, i.e. the server side (parse, validate, decode,
  call the zero backend, encode the answer); with a real network this is where latency goes;
- ``decoding``: response JSON parsing and base64 -> float32 logits;
- ``loss``: cross-entropy over the population, [P, B, C] -> [P];
- ``cma`` (reported apart): pycma's ask + tell and the pickle round trip of its state
  that every generation's checkpoint needs.

The ratio compares the sum of the five phases above with the bare projection matmul
(``Z @ A``, float32) timed in the same run. Phases are timed by wrapping the client's own
methods; medians over the measured generations.

    .venv/bin/python benchmarks/client_overhead.py [--generations 30]

Prints the figures and writes them to benchmarks/results/client_overhead.json.

``--sessions`` measures instead, in one run, a generation through a projection session
(protocol 1.1: the client sends z, the server projects) against the full-prompt path, next
to pycma's own ask + tell: the client's work per generation (everything but the in-process
server), the bytes sent per candidate, and the server's projection per generation. It writes
benchmarks/results/client_overhead_sessions.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _machine import write_json

from bbt.client import Client
from bbt.protocol import Limits, ModelInfo, Usage
from bbt.server.backend import Backend, FloatArray, IntArray
from bbt.server.settings import ServerSettings
from bbt.testing import MOCK_BASE_URL, CoreTransport
from bbt.tuner import Example, TuneConfig, Tuner, cross_entropy, get_preset, load_examples

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
N, H, D, P, B = 50, 1024, 500, 20, 32
PHASES = ("projection", "encoding", "transport", "decoding", "loss")


class ZeroBackend(Backend):
    """A 'model' that answers zeros at once: only bbt's own work is left to time."""

    def __init__(self) -> None:
        self._vocab: dict[str, int] = {}
        self._info = ModelInfo(
            id="zero",
            hidden_size=H,
            vocab_size=50_000,
            num_layers=1,
            max_sequence_length=512,
            mask_token="<mask>",
            mask_token_id=4,
            embedding_mean=0.0,
            embedding_std=0.05,  # about RoBERTa-large's
            dtypes=["float32", "float16"],
            limits=Limits(
                max_prompts_per_request=64,
                max_texts_per_request=256,
                max_sequences_per_request=8192,
                max_prompt_tokens=128,
                max_candidates=64,
                max_text_chars=4096,
                max_embedding_ids=4096,
                max_body_bytes=64 * 1024 * 1024,
            ),
        )

    @property
    def info(self) -> ModelInfo:
        return self._info

    def tokenize(
        self, texts: list[str], add_special_tokens: bool = False
    ) -> tuple[list[list[int]], list[list[str]]]:
        toks = [t.split() for t in texts]
        return [[self._vocab.setdefault(w, 10 + len(self._vocab)) for w in t] for t in toks], toks

    def embed(self, token_ids: IntArray) -> FloatArray:
        return np.zeros((len(token_ids), H), dtype=np.float32)

    def logits(
        self, prompts: FloatArray, texts: list[str], candidate_ids: IntArray
    ) -> tuple[FloatArray, Usage]:
        p, b = prompts.shape[0], len(texts)
        out = np.zeros((p, b, len(candidate_ids)), dtype=np.float32)
        return out, Usage(prompts=p, sequences=p * b, tokens=p * b * 64)


class Timers:
    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)

    def wrap(self, phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.current[phase] += time.perf_counter() - t0

        return timed

    def take(self) -> dict[str, float]:
        out = dict(self.current)
        self.current = defaultdict(float)
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--generations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--smoke", action="store_true", help="2 generations (seconds), for CI")
    ap.add_argument(
        "--sessions", action="store_true", help="session vs full prompt vs pycma (see above)"
    )
    args = ap.parse_args()
    if args.smoke:
        args.generations, args.warmup = 2, 1
    if args.sessions:
        compare_sessions(args)
        return
    if args.out is None:
        name = "client_overhead_smoke" if args.smoke else "client_overhead"
        args.out = RESULTS / f"{name}.json"

    task = get_preset("sst2")
    rows = load_examples(ROOT / "examples" / "data" / "sst2.tsv", task)
    train = rows[:B]
    dev = [Example(dict(r.fields), r.label) for r in rows[B : 2 * B]]

    timers = Timers()
    transport = CoreTransport(ZeroBackend(), ServerSettings(api_keys=[]))
    client = Client(MOCK_BASE_URL, transport=transport, env_file=None)
    # Wrap the client's own steps (the real code path; see the module docstring).
    # The planner is looked up in the module that defines the logits exchange Client runs
    # (found from the method, so no private module is named here): wrapping it there times
    # the very call Client makes.
    client_module = sys.modules[Client._exchange_logits.__module__]
    planner = client_module.plan_logits
    client_module.plan_logits = timers.wrap("encoding", planner)
    build = client._build_request
    client._build_request = timers.wrap("encoding", build)  # type: ignore[method-assign]
    client._http.send = timers.wrap("transport", client._http.send)  # type: ignore[method-assign]
    client._parse = timers.wrap("decoding", client._parse)  # type: ignore[method-assign]
    client._logits_into = timers.wrap("decoding", client._logits_into)  # type: ignore[method-assign]

    t0 = time.perf_counter()
    cfg = TuneConfig(n_tokens=N, dim=D, popsize=P, budget=10**9, eval_every=10**9)
    tuner = Tuner(client, task, train, dev, cfg)
    setup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    tuner.projection.__init__(tuner.recipe)  # type: ignore[misc]  # time A's generation alone
    generate_s = time.perf_counter() - t0
    timers.take()

    per_gen: list[dict[str, float]] = []
    matmul: list[float] = []
    for g in range(args.warmup + args.generations):
        t = time.perf_counter()
        pop = tuner.ask()
        cma_s = time.perf_counter() - t

        t = time.perf_counter()
        z32 = pop.astype(np.float32)
        _ = z32 @ tuner.projection.matrix
        bare = time.perf_counter() - t

        t = time.perf_counter()
        prompts = tuner.prompts(pop)
        proj_s = time.perf_counter() - t

        logits = client.logits(prompts, tuner.train_texts, tuner.candidate_ids)

        t = time.perf_counter()
        losses = cross_entropy(logits, tuner.train_labels)
        loss_s = time.perf_counter() - t

        t = time.perf_counter()
        tuner.tell(losses)
        cma_s += time.perf_counter() - t

        phases = timers.take()
        if g >= args.warmup:
            per_gen.append({"projection": proj_s, "loss": loss_s, "cma": cma_s, **phases})
            matmul.append(bare)

    def med(key: str) -> float:
        return statistics.median(x.get(key, 0.0) for x in per_gen) * 1000

    ms = {k: med(k) for k in (*PHASES, "cma")}
    total = sum(ms[k] for k in PHASES)
    bare_ms = statistics.median(matmul) * 1000
    result = {
        "scale": {"n": N, "H": H, "d": D, "P": P, "B": B, "C": len(tuner.candidate_ids)},
        "generations": args.generations,
        "ms_per_generation": {k: round(v, 3) for k, v in ms.items()},
        "overhead_ms_per_generation": round(total, 3),
        "bare_projection_matmul_ms": round(bare_ms, 3),
        "overhead_to_matmul_ratio": round(total / bare_ms, 2),
        "projection_matrix": {
            "generate_s": round(generate_s, 3),
            "megabytes": tuner.recipe.nbytes / 1e6,
        },
        "setup_s": round(setup_s, 3),
        "request_body_bytes": client.usage.bytes_sent // max(client.usage.requests, 1),
        "machine": _machine(openblas_threads=os.environ.get("OPENBLAS_NUM_THREADS", "default")),
    }
    print(f"client-side cost per generation at n={N}, H={H}, d={D}, P={P}, B={B} (median ms):")
    for k in PHASES:
        print(f"  {k:<11}{ms[k]:9.2f}")
    print(
        f"  {'total':<11}{total:9.2f}   ({total / bare_ms:.1f}x the bare Z @ A matmul, "
        f"{bare_ms:.2f} ms)"
    )
    print(f"  {'cma':<11}{ms['cma']:9.2f}   (pycma ask + tell + state pickle, reported apart)")
    print(f"  A: {tuner.recipe.nbytes / 1e6:.1f} MB, generated in {generate_s:.2f} s")
    write_json(args.out, result, indent=2)


def _machine(**extra: Any) -> dict[str, Any]:
    """The machine as this script's result files have always described it."""
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "cpus": os.cpu_count(),
        **extra,
        # The machine is shared: timings mean little without the load they ran under.
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def compare_sessions(args: argparse.Namespace) -> None:
    """Session vs full prompt vs pycma, per generation, in one run (see the docstring)."""
    import cma

    from bbt.protocol.projection import Projection, ProjectionRecipe
    from bbt.server.local import ServiceCore

    if args.out is None:
        name = "client_overhead_sessions_smoke" if args.smoke else "client_overhead_sessions"
        args.out = RESULTS / f"{name}.json"
    task = get_preset("sst2")
    rows = load_examples(ROOT / "examples" / "data" / "sst2.tsv", task)
    texts = [task.render(r.fields, "<mask>") for r in rows[:B]]
    labels = np.asarray([r.label for r in rows[:B]])
    cands = [10, 11]
    core = ServiceCore(ZeroBackend(), ServerSettings(api_keys=[]))
    timers = Timers()
    client = Client(MOCK_BASE_URL, transport=CoreTransport(core), env_file=None)
    client._http.send = timers.wrap("server", client._http.send)  # type: ignore[method-assign]

    recipe = ProjectionRecipe(seed=0, n_tokens=N, hidden_size=H, dim=D, embedding_std=0.05)
    t0 = time.perf_counter()
    projection = Projection(recipe)
    build_a_s = time.perf_counter() - t0
    p0 = np.zeros((N, H), np.float32)
    t0 = time.perf_counter()
    session = client.open_session(recipe, p0, expected_fingerprint=projection.fingerprint())
    open_s = time.perf_counter() - t0
    host = core.sessions
    assert host is not None
    es = cma.CMAEvolutionStrategy(
        np.zeros(D), 1.0, {"popsize": P, "seed": 1, "verbose": -9, "maxiter": 10**9}
    )

    rows_out: list[dict[str, float]] = []
    bytes_per: dict[str, float] = {}
    for g in range(args.warmup + args.generations):
        t = time.perf_counter()
        pop = np.asarray(es.ask())
        ask_s = time.perf_counter() - t
        took: dict[str, float] = {}
        for mode in ("full", "session"):
            before = client.usage.copy()
            timers.take()
            t = time.perf_counter()
            if mode == "full":
                logits = client.logits(projection.project(pop, p0), texts, cands)
            else:
                logits = client.session_logits(session, pop, texts, cands)
            loss = cross_entropy(logits, labels)
            total = time.perf_counter() - t
            took[mode] = total - timers.take().get("server", 0.0)
            spent = client.usage - before
            bytes_per[mode] = spent.bytes_sent / spent.calls
        t = time.perf_counter()
        es.tell(list(pop), list(np.asarray(loss, dtype=float)))
        tell_s = time.perf_counter() - t
        z32 = pop.astype(np.float32)
        t = time.perf_counter()
        host.decode("", session.id, _session_request(z32, texts, cands), z32.tobytes())
        server_projection_s = time.perf_counter() - t
        if g >= args.warmup:
            rows_out.append(
                {
                    "pycma_ask_tell": ask_s + tell_s,
                    "client_full": took["full"],
                    "client_session": took["session"],
                    "server_session_projection": server_projection_s,
                }
            )

    ms = {k: statistics.median(r[k] for r in rows_out) * 1000 for k in rows_out[0]}
    result = {
        "scale": {"n": N, "H": H, "d": D, "P": P, "B": B, "C": len(cands)},
        "generations": args.generations,
        "ms_per_generation": {k: round(v, 3) for k, v in ms.items()},
        "client_to_pycma": {
            "full": round(ms["client_full"] / ms["pycma_ask_tell"], 2),
            "session": round(ms["client_session"] / ms["pycma_ask_tell"], 2),
        },
        "bytes_up_per_candidate": {k: round(v) for k, v in bytes_per.items()},
        "session_open_s": round(open_s, 3),
        "client_builds_a_s": round(build_a_s, 3),
        "machine": _machine(),
    }
    print(f"per generation at n={N}, H={H}, d={D}, P={P}, B={B} (median ms):")
    print(f"  pycma ask + tell          {ms['pycma_ask_tell']:9.2f}")
    for mode in ("full", "session"):
        ratio = ms[f"client_{mode}"] / ms["pycma_ask_tell"]
        print(
            f"  client, {mode:<8}         {ms[f'client_{mode}']:9.2f}   ({ratio:.2f}x pycma; "
            f"{bytes_per[mode]:,.0f} bytes up per candidate)"
        )
    print(f"  server projection (CPU)   {ms['server_session_projection']:9.2f}")
    print(f"  session open (server builds A): {open_s:.2f} s")
    write_json(args.out, result, indent=2)


def _session_request(z: np.ndarray[Any, Any], texts: list[str], cands: list[int]) -> Any:
    from bbt.protocol import SessionLogitsRequest, Tensor

    header = Tensor(dtype="float32", shape=list(z.shape), data="")
    return SessionLogitsRequest(z=header, texts=texts, candidate_ids=cands)


if __name__ == "__main__":
    main()
