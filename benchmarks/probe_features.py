"""Which features make the best plain probe on the embedded MiniLM, and does the probe's
k-fold loss track held-out accuracy when the prompt moves?

Part 1 (``--part features``): per seed, k-shot train rows and the first ``--heldout``
held-out rows; features of the same texts

- ``raw``: MiniLM on the bare text (transformers, mean-pooled over the attention mask, no
  template, no soft prompt): the sentence embedding a user would try first;
- ``nop-mean`` / ``nop-mask``: bbt's features call on the templated text, no soft prompt;
- ``p0-mean`` / ``p0-mask`` / ``p0-both``: the same under the probe's p0 (z = 0);

each with every head of :mod:`bbt.tuner.probe_head` (C by its k-fold loss), scored on the
held-out rows.

Part 2 (``--part corr``): ``--candidates`` random z around 0 (sigma ``--sigma``); per z the
k-fold log-loss and accuracy on the training shots and the held-out accuracy of its head,
and their rank correlation; ``centroid-loo`` is the centroid head scored by its closed-form
leave-one-out log-loss (``objective="loo"``) instead, C picked by that loss.

Usage::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/probe_features.py --task sst2 --part features
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT))

from _common import (  # noqa: E402
    args_record,
    heldout,
    load_backend,
    sample_kshot,
    to_examples,
    write_result,
)

from bbt.tuner import TuneConfig, get_preset, methods  # noqa: E402
from bbt.tuner.methods.probe import ProbeTuner  # noqa: E402
from bbt.tuner.probe_head import HEAD_KINDS, cv_score, fit_head  # noqa: E402


def raw_embeddings(backend: Any, texts: list[str]) -> np.ndarray[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(backend.model_path)
    model = AutoModel.from_pretrained(backend.model_path).eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            enc = tok(texts[i : i + 32], padding=True, truncation=True, return_tensors="pt")
            h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((h * m).sum(1) / m.sum(1)).numpy())
    return np.concatenate(out).astype(np.float64)


def score(
    tr: np.ndarray[Any, Any], y: np.ndarray[Any, Any], te: np.ndarray[Any, Any], yt: Any, k: int
) -> dict[str, Any]:
    out = {}
    for kind in HEAD_KINDS:
        loss, acc, c = cv_score(tr, y, k, kind=kind)
        head = fit_head(tr, y, k, kind=kind, c=c)
        out[kind] = {
            "cv_loss": round(loss, 4),
            "cv_acc": round(acc, 4),
            "c": c,
            "heldout": float((head.logits(te).argmax(-1) == yt).mean()),
        }
    return out


def build(service: Any, task: Any, train: Any, dev: Any, seed: int, args: Any) -> ProbeTuner:
    cfg = TuneConfig(n_tokens=args.n_tokens, dim=args.dim, seed=seed, method="probe")
    tuner = methods.build_tuner(service, task, train, dev, cfg)
    assert isinstance(tuner, ProbeTuner)
    return tuner


def part_features(service: Any, backend: Any, args: Any, task: Any, held: Any) -> list[Any]:
    recs = []
    for seed in args.seeds:
        tr_rows, dev_rows = sample_kshot(args.task, args.shots, seed)
        train = to_examples(args.task, tr_rows, task)
        dev = to_examples(args.task, dev_rows, task)
        tuner = build(service, task, train, dev, seed, args)
        y = tuner.train_labels
        yt = np.asarray([e.label for e in held])
        texts = tuner.train_texts + [task.render_for(tuner.model_info, e.fields) for e in held]
        n = len(y)
        feats: dict[str, np.ndarray[Any, Any]] = {}
        feats["raw"] = raw_embeddings(
            backend, [r.text for r in tr_rows] + [next(iter(e.fields.values())) for e in held]
        )
        for pooling in ("mean", "mask"):
            feats[f"nop-{pooling}"] = np.asarray(service.features(texts, pooling=pooling)[0])
            tuner.pooling = pooling
            feats[f"p0-{pooling}"] = np.asarray(tuner.features(np.zeros(args.dim), texts)[0])
        feats["p0-both"] = np.concatenate(
            [
                feats["p0-mean"] / np.linalg.norm(feats["p0-mean"], axis=1, keepdims=True),
                feats["p0-mask"] / np.linalg.norm(feats["p0-mask"], axis=1, keepdims=True),
            ],
            1,
        )
        if args.save:
            np.savez(f"{args.save}_{args.task}_s{seed}.npz", y=y, yt=yt, **feats)
        for name, f in feats.items():
            rec = {"seed": seed, "features": name, **score(f[:n], y, f[n:], yt, task.num_classes)}
            recs.append(rec)
            print(rec, flush=True)
        tuner.close()
    return recs


def part_corr(service: Any, args: Any, task: Any, held: Any) -> list[Any]:
    from scipy.stats import spearmanr

    recs = []
    for seed in args.seeds:
        tr_rows, dev_rows = sample_kshot(args.task, args.shots, seed)
        train = to_examples(args.task, tr_rows, task)
        dev = to_examples(args.task, dev_rows, task)
        tuner = build(service, task, train, dev, seed, args)
        tuner.pooling = args.pooling
        y, n = tuner.train_labels, len(tuner.train_labels)
        yt = np.asarray([e.label for e in held])
        texts = tuner.train_texts + [task.render_for(tuner.model_info, e.fields) for e in held]
        rng = np.random.default_rng(100 + seed)
        zs = np.vstack(
            [np.zeros(args.dim), args.sigma * rng.standard_normal((args.candidates, args.dim))]
        )
        scorers = [(k, k, "kfold") for k in HEAD_KINDS] + [("centroid-loo", "centroid", "loo")]
        rows: dict[str, list[tuple[float, float, float]]] = {s[0]: [] for s in scorers}
        for z in zs:
            f = np.asarray(tuner.features(z, texts)[0], dtype=np.float64)
            for name, kind, objective in scorers:
                loss, acc, c = cv_score(f[:n], y, task.num_classes, kind=kind, objective=objective)
                head = fit_head(f[:n], y, task.num_classes, kind=kind, c=c)
                ho = float((head.logits(f[n:]).argmax(-1) == yt).mean())
                rows[name].append((loss, acc, ho))
            print(seed, {k: v[-1] for k, v in rows.items()}, flush=True)
        rec: dict[str, Any] = {"seed": seed}
        for kind, vals in rows.items():
            arr = np.asarray(vals)
            best = int(arr[:, 0].argmin())
            rec[kind] = {
                "rho_neg_cvloss_heldout": float(spearmanr(-arr[:, 0], arr[:, 2])[0]),
                "rho_cvacc_heldout": float(spearmanr(arr[:, 1], arr[:, 2])[0]),
                "z0_heldout": arr[0, 2],
                "best_cvloss_heldout": arr[best, 2],
                "best_cvloss_is_z0": best == 0,
                "mean_heldout": float(arr[1:, 2].mean()),
                "max_heldout": float(arr[1:, 2].max()),
                "rows": vals,
            }
            print(seed, kind, {k: v for k, v in rec[kind].items() if k != "rows"}, flush=True)
        recs.append(rec)
        tuner.close()
    return recs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", choices=("agnews", "sst2"), required=True)
    ap.add_argument("--part", choices=("features", "corr"), default="features")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--n-tokens", type=int, default=5)
    ap.add_argument("--dim", type=int, default=50)
    ap.add_argument("--sigma", type=float, default=0.5)
    ap.add_argument("--candidates", type=int, default=15)
    ap.add_argument("--pooling", default="mean")
    ap.add_argument("--tag", default=None)
    ap.add_argument(
        "--save", default=None, help="write each seed's features to SAVE_<task>_s<seed>.npz"
    )
    args = ap.parse_args(argv)

    from bbt.client import LocalClient

    backend = load_backend("float32", 1)
    service = LocalClient(backend)
    task = get_preset(args.task)
    held = to_examples(args.task, heldout(args.task, args.heldout), task)
    t0 = time.time()
    if args.part == "features":
        recs = part_features(service, backend, args, task, held)
    else:
        recs = part_corr(service, args, task, held)
    write_result(
        args.tag or f"probe_{args.part}_{args.task}",
        {"args": args_record(args), "runs": recs, "seconds": round(time.time() - t0, 1)},
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
