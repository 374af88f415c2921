"""Wire cost per candidate: bbt's protocol against vLLM's ``prompt_embeds`` interface.

One *candidate* (one API call) is one soft prompt scored on the whole k-shot training set.

- **bbt** (protocol v1): a request carries P prompts of n x H numbers once, plus the B
  texts, and the response carries P x B x C logits. Figures from
  ``benchmarks/wire_bytes.py`` (real request and response bodies at paper scale, P = 20),
  divided by P.
- **vLLM** (``--enable-prompt-embeds``, Completions API): the server takes no text beside
  embeddings, so each example is a whole sequence of embeddings, (n + L) x H, where L is
  the example's token count; each is ``torch.save``d and base64-encoded into the JSON
  ``prompt_embeds`` list. Per candidate: one body with its B sequences, measured here by
  building it from real tensors. L comes from the MiniLM tokenizer on real SST-2 16-shot
  training sentences in the paper's template. The response per example is a completion of
  one token with ``logprobs`` (vLLM's default cap, 20 top tokens): the only way to read the
  verbalizer words' scores, and even then only when they are in the top 20. Its size is
  measured on a body of that schema built here.

Usage::

    .venv/bin/python benchmarks/wire_cost.py            # paper scale: n=50, H=1024, B=32
    .venv/bin/python benchmarks/wire_cost.py --smoke    # tiny, for CI

Prints a table and writes ``benchmarks/results/wire_cost.json``.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common
import wire_bytes

TOP_LOGPROBS = 20  # vLLM's default --max-logprobs


def token_lengths(k: int, seed: int, smoke: bool) -> list[int]:
    """Tokens (with [CLS]/[SEP]) of 2k SST-2 training sentences in the paper's template."""
    import transformers

    from bbt.server.hf import default_model_path

    tok = transformers.AutoTokenizer.from_pretrained(str(default_model_path()))
    rows = _common.sample_rows("sst2", 2 * k, seed)
    texts = _common.render("sst2", rows, tok.mask_token)
    if smoke:
        texts = texts[:2]
    return [len(ids) for ids in tok(texts)["input_ids"]]


def b64_tensor(rows: int, hidden: int, dtype: Any, rng: np.random.Generator) -> str:
    import torch

    t = torch.from_numpy(rng.normal(0.0, 0.05, size=(rows, hidden)).astype(np.float32))
    buf = io.BytesIO()
    torch.save(t.to(dtype), buf)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def vllm_request_bytes(lengths: list[int], n: int, hidden: int, dtype: Any) -> int:
    rng = np.random.default_rng(0)
    body = {
        "model": "roberta-large",
        "prompt_embeds": [b64_tensor(n + length, hidden, dtype, rng) for length in lengths],
        "max_tokens": 1,
        "logprobs": TOP_LOGPROBS,
        "temperature": 0.0,
    }
    return len(json.dumps(body).encode())


def vllm_response_bytes(batch: int) -> int:
    """A Completions response for ``batch`` prompts, one token each, 20 top logprobs."""
    words = [f" word{i}" for i in range(TOP_LOGPROBS)]
    words[:2] = [" great", " terrible"]
    choices = [
        {
            "index": i,
            "text": " great",
            "logprobs": {
                "text_offset": [0],
                "token_logprobs": [-0.6931471805599453],
                "tokens": [" great"],
                "top_logprobs": [{w: -float(np.log(2.0 + j)) for j, w in enumerate(words)}],
            },
            "finish_reason": "length",
            "stop_reason": None,
            "prompt_logprobs": None,
        }
        for i in range(batch)
    ]
    body = {
        "id": "cmpl-0123456789abcdef0123456789abcdef",
        "object": "text_completion",
        "created": 1764158400,
        "model": "roberta-large",
        "choices": choices,
        "usage": {"prompt_tokens": 2496, "total_tokens": 2528, "completion_tokens": 32},
    }
    return len(json.dumps(body).encode())


def main(argv: list[str] | None = None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=13, help="k-shot sample of SST-2")
    ap.add_argument("--out-dir", type=Path, default=_common.RESULTS)
    ap.add_argument("--name", default="wire_cost")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    args = ap.parse_args(argv)
    n, hidden, p = wire_bytes.N, wire_bytes.H, wire_bytes.P
    if args.smoke:
        n, hidden = 4, 16
        args.name = args.name if args.name != "wire_cost" else "wire_cost_smoke"

    lengths = token_lengths(16, args.seed, args.smoke)
    batch = len(lengths)
    rows: list[dict[str, Any]] = []
    for dtype, itemsize in (("float32", 4), ("float16", 2)):
        up = wire_bytes.request_bytes(dtype) / p  # type: ignore[arg-type]
        down = wire_bytes.response_bytes(dtype) / p  # type: ignore[arg-type]
        rows.append(
            {
                "interface": "bbt protocol v1",
                "encoding": dtype,
                "raw_prompt_bytes": n * hidden * itemsize,
                "up": up,
                "down": down,
            }
        )
    vllm_down = vllm_response_bytes(batch)
    for name, dt, itemsize in (
        ("float32", torch.float32, 4),
        ("bfloat16", torch.bfloat16, 2),
        ("float16", torch.float16, 2),
    ):
        up = vllm_request_bytes(lengths, n, hidden, dt)
        raw = sum((n + length) * hidden * itemsize for length in lengths)
        rows.append(
            {
                "interface": "vLLM prompt_embeds",
                "encoding": name,
                "raw_prompt_bytes": raw,
                "up": up,
                "down": vllm_down,
            }
        )

    base = rows[0]["up"]
    print(
        f"per candidate: n={n} prompt tokens, H={hidden}, B={batch} SST-2 examples "
        f"(tokens per example: mean {np.mean(lengths):.1f}, min {min(lengths)}, "
        f"max {max(lengths)}); bbt figures from wire_bytes.py with P={p} (the paper-scale "
        "bodies, divided by P)"
    )
    print(
        "| interface | encoding | raw tensor bytes | up (request) | down (response) | "
        "up vs bbt float32 |"
    )
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        r["up_ratio_vs_bbt_float32"] = r["up"] / base
        print(
            f"| {r['interface']} | {r['encoding']} | {r['raw_prompt_bytes']:,} B | "
            f"{r['up']:,.0f} B | {r['down']:,.0f} B | {r['up_ratio_vs_bbt_float32']:.1f}x |"
        )
    if args.smoke:
        note = "smoke: bbt rows at paper scale, vLLM rows at the tiny smoke sizes"
    else:
        note = "paper scale (n=50, H=1024, B=32)"
    _common.write_result(
        args.name,
        {
            "note": note,
            "n_tokens": n,
            "hidden_size": hidden,
            "batch": batch,
            "population_for_bbt": p,
            "token_lengths": lengths,
            "top_logprobs": TOP_LOGPROBS,
            "rows": rows,
        },
        args.out_dir,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
