"""Requests and bytes of one BBT generation over vLLM (both adapter modes) and bbt's protocol.

One *generation* is a population of P candidate soft prompts (n tokens x H) scored on the B
k-shot training texts: P API calls in the paper's unit. At paper scale (Sun et al., 2022):
P=20, n=50, B=32, C=2 verbalizer words; H=4096, the width of a 7-8B decoder (Llama, Qwen).

- **vLLM black-box** (``bbt.vllm``, Chat Completions): one request per (prompt, text): a
  ``prompt_embeds`` part (n x H, ``torch.save`` + base64) and the text.
- **vLLM embedding-table** (Completions): the adapter embeds the texts itself; one request
  per prompt holding its B whole sequences (BOS + n + text tokens) x H.
- **bbt protocol v1**: the P prompts once plus the B texts, split only by the reference
  server's limits (``bbt.server.hf.default_limits``: 16 MiB bodies).

The vLLM figures are what :class:`bbt.vllm.VLLMService` itself sends, counted by a transport
that answers like vLLM (the shapes of ``bbt.testing.vllm_fake``) without running a model;
the answers' sizes are those of such answers (``token_id:N`` keys, N up to 6 digits).
Text tokens in embedding-table mode: this transport's ``/tokenize`` gives
``ceil(1.3 x words)`` tokens per text (about a Llama-family tokenizer on English prose).
The bbt figures are the real request and response bodies (``model_dump_json``). HTTP
headers (a few hundred bytes per request) are not counted.

Usage::

    python benchmarks/vllm_wire.py            # paper scale: P=20, n=50, B=32, H=4096
    python benchmarks/vllm_wire.py --smoke    # tiny, for CI

Prints a table and writes ``benchmarks/results/vllm_wire.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common

from bbt.protocol import LogitsResponse, ModelInfo, Tensor, Usage
from bbt.server.hf import default_limits

P, N, B, H, C = 20, 50, 32, 4096, 2
VOCAB = 128_256  # Llama 3's vocabulary: ids up to 6 digits in "token_id:N"
TEMPLATE = "Review: {sentence}\nSentiment:"


def texts(b: int) -> list[str]:
    return [TEMPLATE.format(sentence=s) for s in _common.sentences(b)]


class EchoVLLM:
    """Answers the adapter's requests with vLLM-shaped bodies; counts what went each way."""

    def __init__(self, hidden: int, max_model_len: int = 8192) -> None:
        self.hidden = hidden
        self.max_model_len = max_model_len
        self.sent: dict[str, list[int]] = {}

    def handler(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        body = json.loads(request.content) if request.content else {}
        self.sent.setdefault(path, []).append(len(request.content))
        if path == "/version":
            return httpx.Response(200, json={"version": "0.26.0"})
        if path == "/v1/models":
            card = {"id": "llama", "object": "model", "max_model_len": self.max_model_len}
            return httpx.Response(200, json={"object": "list", "data": [card]})
        if path == "/tokenize":
            words = body["prompt"].split()
            count = math.ceil(1.3 * len(words)) + (1 if body.get("add_special_tokens") else 0)
            ids = [1000 + (i % 5000) for i in range(count)]
            strs = [f"t{i}" for i in ids] if body.get("return_token_strs") else None
            return httpx.Response(
                200,
                json={
                    "count": count,
                    "max_model_len": self.max_model_len,
                    "tokens": ids,
                    "token_strs": strs,
                },
            )
        ids = body["logprob_token_ids"]
        # Keyed by the ids asked for, as vLLM does: values do not matter here.
        listed = {f"token_id:{i}": -float(np.log(3.0 + k)) for k, i in enumerate(ids)} | {
            f"token_id:{VOCAB - 1}": -0.01
        }
        usage = {"prompt_tokens": 120, "total_tokens": 121, "completion_tokens": 1}
        if path == "/v1/chat/completions":
            top = [{"token": t, "logprob": v, "bytes": list(t.encode())} for t, v in listed.items()]
            first = top[-1]
            answer = {
                "id": "chatcmpl-0123456789abcdef0123456789abcdef",
                "object": "chat.completion",
                "created": 1764158400,
                "model": "llama",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": " the", "reasoning": None},
                        "logprobs": {"content": [{**first, "top_logprobs": top}]},
                        "finish_reason": "length",
                        "stop_reason": None,
                        "token_ids": None,
                    }
                ],
                "usage": usage,
                "prompt_logprobs": None,
                "prompt_token_ids": None,
            }
            return httpx.Response(200, json=answer)
        n = len(body["prompt_embeds"])
        choices = [
            {
                "index": i,
                "text": " the",
                "logprobs": {
                    "text_offset": [0],
                    "token_logprobs": [-0.01],
                    "tokens": [f"token_id:{VOCAB - 1}"],
                    "top_logprobs": [listed],
                },
                "finish_reason": "length",
                "stop_reason": None,
                "prompt_logprobs": None,
            }
            for i in range(n)
        ]
        answer = {
            "id": "cmpl-0123456789abcdef0123456789abcdef",
            "object": "text_completion",
            "created": 1764158400,
            "model": "llama",
            "choices": choices,
            "usage": {**usage, "prompt_tokens": 120 * n},
        }
        return httpx.Response(200, json=answer)


def vllm_generation(mode: str, p: int, n: int, b: int, hidden: int, dtype: str) -> dict[str, Any]:
    from bbt.vllm import VLLMService

    echo = EchoVLLM(hidden)
    kw: dict[str, Any] = {"config": {"hidden_size": hidden, "vocab_size": VOCAB}}
    if mode == "completions":
        rng = np.random.default_rng(0)
        kw["embedding_table"] = (rng.standard_normal((6000, hidden)) * 0.02).astype(np.float32)
        kw["vocab_size"] = VOCAB
    else:
        kw["embedding_std"] = 0.02
    svc = VLLMService(
        "http://vllm.test",
        transport=httpx.MockTransport(echo.handler),
        env_file=None,
        dtype=dtype,  # type: ignore[arg-type]
        mode=mode,  # type: ignore[arg-type]
        **kw,
    )
    ts = texts(b)
    prompts = (np.random.default_rng(1).standard_normal((p, n, hidden)) * 0.02).astype(np.float32)
    # Setup (discovery, tokenising the texts once) is not part of a generation.
    svc.model_info()
    if mode == "completions":
        svc._ids_of(ts)
        svc._special_prefix()
    else:
        svc.chat_layout()  # BOS and the text's lead, probed once per server
    before = svc.usage.copy()
    t0 = time.perf_counter()
    svc.logits(prompts, ts, [VOCAB - 3, VOCAB - 2])
    elapsed = time.perf_counter() - t0
    spent = svc.usage - before
    return {
        "requests": spent.requests,
        "up": spent.bytes_sent,
        "down": spent.bytes_received,
        "client_s": elapsed,
    }


def bbt_generation(p: int, n: int, b: int, hidden: int, dtype: str) -> dict[str, Any]:
    from bbt.client.planning import plan_logits

    limits = default_limits(8192).model_copy(update={"max_prompt_tokens": max(n, 1)})
    info = ModelInfo(
        id="llama",
        kind="causal_lm",
        hidden_size=hidden,
        vocab_size=VOCAB,
        num_layers=32,
        max_sequence_length=8192,
        mask_token=None,
        mask_token_id=None,
        embedding_mean=0.0,
        embedding_std=0.02,
        dtypes=["float32", "float16"],
        limits=limits,
    )
    prompts = (np.random.default_rng(1).standard_normal((p, n, hidden)) * 0.02).astype(np.float32)
    chunks = plan_logits(info, prompts, texts(b), [VOCAB - 3, VOCAB - 2], dtype)  # type: ignore[arg-type]
    up = down = 0
    for ch in chunks:
        up += len(ch.request.model_dump_json().encode())
        pp, bb = ch.p1 - ch.p0, ch.b1 - ch.b0
        resp = LogitsResponse(
            model="llama",
            logits=Tensor.from_numpy(np.zeros((pp, bb, C), np.float32), dtype),  # type: ignore[arg-type]
            usage=Usage(prompts=pp, sequences=pp * bb, tokens=pp * bb * 80),
        )
        down += len(resp.model_dump_json().encode())
    return {"requests": len(chunks), "up": up, "down": down, "client_s": None}


def _mb(x: float) -> str:
    return f"{x / 1e6:,.1f} MB" if x >= 1e5 else f"{x / 1e3:,.1f} kB"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out-dir", type=Path, default=_common.RESULTS)
    ap.add_argument("--name", default="vllm_wire")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    args = ap.parse_args(argv)
    p, n, b, hidden = P, N, B, H
    if args.smoke:
        p, n, b, hidden = 2, 4, 3, 16
        args.name = args.name if args.name != "vllm_wire" else "vllm_wire_smoke"
    rows: list[dict[str, Any]] = []
    for dtype in ("float32", "float16"):
        rows.append(
            {
                "interface": "bbt protocol v1",
                "dtype": dtype,
                **bbt_generation(p, n, b, hidden, dtype),
            }
        )
    for mode, label in (("chat", "vLLM black-box (chat)"), ("completions", "vLLM embedding table")):
        for dtype in ("float32", "bfloat16"):
            rows.append(
                {
                    "interface": label,
                    "dtype": dtype,
                    **vllm_generation(mode, p, n, b, hidden, dtype),
                }
            )
    base = rows[0]["up"]
    print(f"one generation: P={p} prompts x n={n} tokens x H={hidden}, B={b} texts, C={C} words")
    print("| interface | dtype | requests | up | down | up vs bbt float32 |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        r["up_ratio_vs_bbt_float32"] = r["up"] / base
        print(
            f"| {r['interface']} | {r['dtype']} | {r['requests']:,} | {_mb(r['up'])} | "
            f"{_mb(r['down'])} | {r['up_ratio_vs_bbt_float32']:.1f}x |"
        )
    _common.write_result(
        args.name,
        {
            "note": "smoke sizes" if args.smoke else "paper scale with a 4,096-wide model",
            "population": p,
            "n_tokens": n,
            "batch": b,
            "hidden_size": hidden,
            "rows": rows,
        },
        args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
