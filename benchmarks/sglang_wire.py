"""Bytes of one BBT generation over SGLang, measured with the client's usage counters.

One *generation* is P candidate soft prompts (n tokens x H) scored on B training texts. The
SGLang adapter (:class:`bbt.sglang.SGLangService`) sends every sequence ``BOS + prompt +
text`` as JSON numbers in ``/generate``'s ``input_embeds``, one request per prompt holding
its B sequences. Here it talks to bbt's SGLang fake (``bbt.testing.sglang_fake``) in-process
with a fake model of hidden size H, and the figures are its ``usage`` counters for one
``logits`` call (set-up, i.e. discovery and tokenising the texts once, excluded). Numbers are
text, so their length depends on their values: prompts are drawn N(0, std of the fake's
table), as BBT's ``A z + p0`` spreads them, and the table rows are the fake's. Texts are B
strings of ``--words`` of the fake's vocabulary: one token per word, plus BOS. HTTP headers
are not counted.

Usage::

    python benchmarks/sglang_wire.py     # n=50, B=32, 25-token texts; H=64 (P=20), H=4096 (P=2)
    python benchmarks/sglang_wire.py --smoke         # tiny, for CI

Prints a table and writes ``benchmarks/results/sglang_wire.json``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

from bbt.sglang import SGLangService
from bbt.testing.sglang_fake import FAKE_BASE_URL, SGLangFake


def measure(p: int, n: int, b: int, hidden: int, words: int, dtype: str) -> dict[str, Any]:
    fake = SGLangFake(hidden_size=hidden, keep_requests=0)
    vocab = [w for w in fake.vocab if w.isalpha()]
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(vocab, words)) for _ in range(b)]
    svc = SGLangService(
        FAKE_BASE_URL,
        transport=fake.transport(),
        env_file=None,
        embedding_table=fake.table,
        config=fake.config(),
        dtype=dtype,  # type: ignore[arg-type]
    )
    ids = svc.tokenize(["great bad"]).ids[0]
    prompts = (rng.standard_normal((p, n, hidden)) * float(fake.table.std())).astype(np.float32)
    svc.logits(prompts[:1], texts, ids)  # set-up: discovery, BOS probe, the texts' ids
    before = svc.usage.copy()
    svc.logits(prompts, texts, ids)
    spent = svc.usage - before
    svc.close()
    return {
        "hidden_size": hidden,
        "dtype": dtype,
        "requests": spent.requests,
        "bytes_sent": spent.bytes_sent,
        "bytes_received": spent.bytes_received,
        "bytes_per_candidate": spent.bytes_sent / p,
        "bytes_per_number": spent.bytes_sent / (p * b * (1 + n + words) * hidden),
        "tokens_per_sequence": spent.tokens / (p * b),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="P=2, n=4, B=3, H=16: seconds")
    ap.add_argument("--words", type=int, default=25, help="tokens per text (one per word)")
    ap.add_argument(
        "--wide-prompts",
        type=int,
        default=2,
        help="candidates measured at H=4096 (each is ~0.1 GB of JSON: per-candidate figures)",
    )
    args = ap.parse_args(argv)
    p, n, b = (2, 4, 3) if args.smoke else (20, 50, 32)
    widths = ((16, p),) if args.smoke else ((64, p), (4096, args.wide_prompts))
    rows = [
        {"P": pw, **measure(pw, n, b, h, args.words, dtype)}
        for h, pw in widths
        for dtype in ("float32", "float16")
    ]
    print(f"P prompts x n={n} tokens, B={b} texts of {args.words} tokens each")
    print("| H | P | dtype | requests | up | per candidate | per number | down |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['hidden_size']} | {r['P']} | {r['dtype']} | {r['requests']} | "
            f"{r['bytes_sent'] / 1e6:,.1f} MB | {r['bytes_per_candidate'] / 1e6:,.2f} MB | "
            f"{r['bytes_per_number']:.2f} B | {r['bytes_received'] / 1e3:,.1f} kB |"
        )
    if not args.smoke:
        _common.write_result("sglang_wire", {"n": n, "B": b, "words": args.words, "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
