"""Check bbt's vLLM adapter against a running vLLM server and print what it finds.

What it checks, in order (each line says ok / FAIL / skip and why):

1. ``/version``: the vLLM version, and that it is at least 0.26 (prompt-embeds fixes);
2. ``/v1/models``: the served model and its context length;
3. ``/tokenize`` and the verbalizer: each word one token after the template's tail;
4. black-box scoring (Chat Completions with a ``prompt_embeds`` part, bbt's chat template):
   prompt embeddings accepted, ``logprob_token_ids`` honoured (else the top-k fallback);
5. with ``--embeddings``: embedding-table scoring (Completions), and that both modes give the
   same log-probs: if they do, the server's chat template and BOS handling put the soft
   prompt exactly where bbt puts it;
6. timing: seconds per request and per scored sequence for a small population.

Usage (against a server started as docs/vllm.md shows)::

    python benchmarks/vllm_live.py --base-url http://HOST:8000 --config /models/llama/config.json \
        [--embeddings /models/llama/embed_tokens.npy] [--model ID] [--api-key KEY]

The API key may also come from ``BBT_API_KEY``; it is never printed. Exit status 0 when every
check that ran passed, 1 otherwise. Writes ``benchmarks/results/vllm_live.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

from bbt.errors import BBTError

TEMPLATE = "Review: {text}\nSentiment:"
WORDS = (" negative", " positive")
TEXTS = [
    "a gripping, beautifully shot drama",
    "the jokes land with a thud",
    "funny, warm and smarter than it has any right to be",
    "a tired retread of better films",
]


class Report:
    def __init__(self) -> None:
        self.checks: list[dict[str, Any]] = []

    def line(self, name: str, status: str, detail: str) -> None:
        self.checks.append({"check": name, "status": status, "detail": detail})
        print(f"{status:>4}  {name}: {detail}", flush=True)

    @property
    def failed(self) -> bool:
        return any(c["status"] == "FAIL" for c in self.checks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base-url", required=True, help="the vLLM server root, e.g. http://gpu:8000")
    ap.add_argument("--model", default=None, help="served model id (default: the first)")
    ap.add_argument("--api-key", default=None, help="vLLM's --api-key (or BBT_API_KEY)")
    ap.add_argument("--config", type=Path, default=None, help="the model's config.json")
    ap.add_argument("--embeddings", type=Path, default=None, help="input-embedding table")
    ap.add_argument("--hidden-size", type=int, default=None)
    ap.add_argument("--embedding-std", type=float, default=None)
    ap.add_argument("--template", default=TEMPLATE, help="a decoder template with {text}")
    ap.add_argument("--words", nargs="+", default=list(WORDS), help="verbalizer words")
    ap.add_argument("--prompts", type=int, default=4, help="population for the timing")
    ap.add_argument("--n-tokens", type=int, default=10, help="soft prompt length")
    ap.add_argument("--out-dir", type=Path, default=_common.RESULTS)
    ap.add_argument("--name", default="vllm_live")
    args = ap.parse_args(argv)

    from bbt.vllm import VLLMService

    report = Report()
    common: dict[str, Any] = {
        "config": args.config,
        "hidden_size": args.hidden_size,
        "embedding_std": args.embedding_std,
        "embedding_table": args.embeddings,  # its statistics; chat mode sends no table
    }
    if args.embeddings is None and args.embedding_std is None:
        common["embedding_std"] = 0.02  # scale of the probe prompts only
    record: dict[str, Any] = {"base_url": args.base_url}
    try:
        chat = VLLMService(args.base_url, args.api_key, args.model, mode="chat", **common)
    except BBTError as exc:
        report.line("settings", "FAIL", str(exc))
        return 1
    with chat:
        return _checks(args, chat, report, record)


def _checks(args: argparse.Namespace, chat: Any, report: Report, record: dict[str, Any]) -> int:
    from bbt.tuner.tasks import Task, verbalizer_ids
    from bbt.vllm import VLLMService

    try:
        info = chat.model_info()
        report.line("version", "ok", f"vLLM {chat.server_version or '(no /version: not checked)'}")
        report.line(
            "model",
            "ok",
            f"{info.id}: context {info.max_sequence_length} tokens, hidden size "
            f"{info.hidden_size}, embedding std {info.embedding_std:.4g}",
        )
        record.update(version=chat.server_version, model=info.id, hidden_size=info.hidden_size)
    except BBTError as exc:
        report.line("discovery", "FAIL", str(exc))
        _common.write_result(args.name, {**record, "checks": report.checks}, args.out_dir)
        return 1

    task = Task(
        "live",
        args.template,
        tuple(f"c{i}" for i in range(len(args.words))),
        tuple(args.words),
        kind="causal_lm",
    )
    try:
        ids = verbalizer_ids(task, chat)
        report.line("tokenize", "ok", f"verbalizer {args.words} -> ids {ids}")
    except BBTError as exc:
        report.line("tokenize", "FAIL", str(exc))
        _common.write_result(args.name, {**record, "checks": report.checks}, args.out_dir)
        return 1
    texts = [args.template.format(text=t) for t in TEXTS]
    rng = np.random.default_rng(0)
    prompts = (
        rng.standard_normal((args.prompts, args.n_tokens, info.hidden_size)) * info.embedding_std
    ).astype(np.float32)

    black: np.ndarray[Any, Any] | None = None
    try:
        # torch (vLLM's tensor format) imported before the clock starts: seconds on a cold
        # start. Without it, ``chat.logits`` fails below with bbt's own install hint.
        with contextlib.suppress(ImportError):
            import torch  # noqa: F401
        before = chat.usage.copy()
        t0 = time.perf_counter()
        black = chat.logits(prompts, texts, ids)
        dt = time.perf_counter() - t0
        spent = chat.usage - before
        exact = chat.fallback_positions == 0
        report.line(
            "black-box scoring",
            "ok",
            f"{spent.requests} chat requests in {dt:.2f} s ({dt / spent.requests * 1e3:.1f} ms per "
            f"request, up to 8 in flight), {spent.bytes_sent / spent.requests / 1e3:.1f} kB up per "
            "request",
        )
        report.line(
            "logprob_token_ids",
            "ok" if exact else "warn",
            "honoured: exact log-probs of the verbalizer"
            if exact
            else f"ignored (older server): top-k fallback on {chat.fallback_positions} positions",
        )
        record["black_box"] = {"requests": spent.requests, "seconds": dt, "up": spent.bytes_sent}
    except BBTError as exc:
        report.line("black-box scoring", "FAIL", str(exc))

    table = None
    if args.embeddings is None:
        report.line("embedding-table scoring", "skip", "no --embeddings given")
    else:
        try:
            table = VLLMService(
                args.base_url,
                args.api_key,
                args.model,
                embedding_table=args.embeddings,
                config=args.config,
                hidden_size=args.hidden_size,
            )
        except BBTError as exc:
            report.line("embedding-table scoring", "FAIL", str(exc))
            table = None
    if table is not None:
        with table:
            _table_checks(args, table, report, record, prompts, texts, ids, black)
    _common.write_result(args.name, {**record, "checks": report.checks}, args.out_dir)
    return 1 if report.failed else 0


def _table_checks(
    args: argparse.Namespace,
    table: Any,
    report: Report,
    record: dict[str, Any],
    prompts: np.ndarray[Any, Any],
    texts: list[str],
    ids: list[int],
    black: np.ndarray[Any, Any] | None,
) -> None:
    try:
        table.model_info()
        before = table.usage.copy()
        t0 = time.perf_counter()
        full = table.logits(prompts, texts, ids)
        dt = time.perf_counter() - t0
        spent = table.usage - before
        report.line(
            "embedding-table scoring",
            "ok",
            f"{spent.requests} requests (completions and the texts' /tokenize) in {dt:.2f} s",
        )
        record["embedding_table"] = {"requests": spent.requests, "seconds": dt}
        if black is not None:
            gap = float(np.abs(full - black).max())
            same = gap < 0.05
            report.line(
                "modes agree",
                "ok" if same else "FAIL",
                f"max |chat - completions| log-prob gap {gap:.4f}"
                + (
                    ""
                    if same
                    else ": the server's chat template or BOS handling differs from bbt's "
                    "(start vLLM with bbt's template, docs/vllm.md)"
                ),
            )
            record["max_gap"] = gap
    except BBTError as exc:
        report.line("embedding-table scoring", "FAIL", str(exc))


if __name__ == "__main__":
    raise SystemExit(main())
