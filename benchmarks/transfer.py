"""Transfer on the embedded MiniLM: BBT from a vocabulary p0, from a pre-trained prompt, and
the mixture of pre-trained prompts, at equal API calls, on held-out rows.

Tasks (all from AG News, /work/shared/data/agnews/train.tsv; see docs/transfer.md for why):

- target: Business vs Sci/Tech, template ``{mask} News: {text}``, words Business / Tech;
- source A: 4-way AG News topic, same template, words World / Sports / Business / Tech (the
  target's words are a subset, so the source prompt learns the slot the target reads);
- source B: World vs Sports, same template, words World / Sports (a related task whose
  classes the target never sees; a second source for the mixture).

Source and target rows are disjoint; the held-out rows are disjoint from both. Each source
prompt is pre-trained once (prompt tuning with gradients, ``bbt.whitebox``) and saved as a
run directory; then for each seed the three black-box runs share the target's k-shot split.

    PYTHONPATH=. HF_HUB_OFFLINE=1 python benchmarks/transfer.py --out /tmp/transfer

A source directory already in ``--out`` (``src_<name>`` with a manifest) is reused rather than
trained again. ``--via-registry`` publishes source A as a shared prompt in an in-memory
registry and starts the pre-trained runs from ``prompt:ID`` (the same bytes as ``run:DIR``).
Each curve starts at 0 calls with p0's dev accuracy: a start that is already as good as the
vocabulary run's end needs no tuning call.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bbt.client import LocalClient
from bbt.server.hf import HFBackend
from bbt.server.registry import PromptRegistry
from bbt.server.shared_prompts import publish
from bbt.tuner import Example, InitialPrompt, Task, TuneConfig, get_preset, tune
from bbt.tuner.tasks import verbalizer_ids
from bbt.tuner.transfer import publication
from bbt.whitebox.pretrain import pretrain_prompt, save_pretrained

AGNEWS = Path("/work/shared/data/agnews/train.tsv")
CLASSES = ("World", "Sports", "Business", "Sci/Tech")
TEMPLATE = "{mask} News: {text}"
TARGET = Task("biz_sci", TEMPLATE, ("Business", "Sci/Tech"), ("Business", "Tech"))
SOURCE_WS = Task("world_sports", TEMPLATE, ("World", "Sports"), ("World", "Sports"))


def load_rows(path: Path) -> dict[int, list[str]]:
    by_class: dict[int, list[str]] = {i: [] for i in range(len(CLASSES))}
    with path.open(newline="") as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            by_class[CLASSES.index(row["label"])].append(row["text"])
    return by_class


def take(
    pools: dict[int, list[str]], classes: tuple[int, ...], per_class: int, rng: np.random.Generator
) -> list[Example]:
    """``per_class`` rows of each class (removed from the pools), labelled 0.. in order."""
    out = []
    for label, c in enumerate(classes):
        pool = pools[c]
        idx = sorted(rng.choice(len(pool), size=per_class, replace=False).tolist(), reverse=True)
        out += [Example({"text": pool.pop(i)}, label) for i in idx]
    rng.shuffle(out)  # type: ignore[arg-type]
    return out


def heldout_accuracy(
    service: LocalClient, task: Task, prompt: np.ndarray[Any, Any], rows: list[Example]
) -> float:
    info = service.model_info()
    texts = [task.render_for(info, e.fields) for e in rows]
    logits = service.logits(prompt[None], texts, verbalizer_ids(task, service))[0]
    labels = np.array([e.label for e in rows])
    return float(np.mean(logits.argmax(-1) == labels))


def run_one(
    service: LocalClient,
    split: tuple[list[Example], list[Example]],
    heldout: list[Example],
    cfg: TuneConfig,
    init: InitialPrompt,
) -> dict[str, Any]:
    curve: list[tuple[int, float]] = []

    def record(rec: Any) -> None:
        if rec.best_dev_metric is not None:
            curve.append((int(rec.calls), float(rec.best_dev_metric)))
        elif rec.dev_metric is not None:
            curve.append((int(rec.calls), float(rec.dev_metric)))

    start = time.perf_counter()
    res = tune(service, TARGET, *split, cfg, initial_prompt=init, callbacks=[record])
    if res.initial_dev_metric is not None:  # p0 on dev, before any tuning call
        curve.insert(0, (0, float(res.initial_dev_metric)))
    p0 = service_p0(service, cfg, init)
    return {
        "heldout_acc": heldout_accuracy(service, TARGET, res.prompt, heldout),
        "heldout_acc_p0": heldout_accuracy(service, TARGET, p0, heldout),
        "dev_best": res.dev_metric,
        "initial_dev": res.initial_dev_metric,
        "curve": curve,
        "seconds": time.perf_counter() - start,
    }


def service_p0(service: LocalClient, cfg: TuneConfig, init: InitialPrompt) -> Any:
    from bbt.tuner.prompts import build_initial_prompt

    return build_initial_prompt(init, service, cfg.n_tokens)[0]


def calls_to_reach(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((c for c, m in curve if m >= target), None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--budget", type=int, default=400)
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--dim", type=int, default=200)
    ap.add_argument("--k", type=int, default=16, help="train and dev rows per class")
    ap.add_argument("--heldout", type=int, default=100, help="held-out rows per class")
    ap.add_argument("--pretrain-per-class", type=int, default=32)
    ap.add_argument("--pretrain-steps", type=int, default=60)
    ap.add_argument("--pretrain-lr", type=float, default=3e-3)
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--eval-every", type=int, default=40, help="calls between dev checks")
    ap.add_argument("--via-registry", action="store_true", help="pre-trained start: prompt:ID")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    rng = np.random.Generator(np.random.PCG64(1234))
    pools = load_rows(AGNEWS)
    heldout = take(pools, (2, 3), args.heldout, rng)
    src_a_train = take(pools, (0, 1, 2, 3), args.pretrain_per_class, rng)
    src_a_test = take(pools, (0, 1, 2, 3), 25, rng)
    src_b_train = take(pools, (0, 1), args.pretrain_per_class, rng)
    src_b_test = take(pools, (0, 1), 25, rng)

    sources: dict[str, Any] = {}
    for name, task, tr, te in (
        ("agnews4", get_preset("agnews"), src_a_train, src_a_test),
        ("world_sports", SOURCE_WS, src_b_train, src_b_test),
    ):
        path = args.out / f"src_{name}"
        if (path / "manifest.json").is_file():  # trained by an earlier run of this script
            meta = json.loads((path / "manifest.json").read_text())["pretrain"]
            prompt = np.load(path / "prompt.npy")
            meta["reused"] = True
        else:
            pre = pretrain_prompt(
                task, tr, te, n_tokens=args.n_tokens, steps=args.pretrain_steps,
                lr=args.pretrain_lr, seed=0, source_name=name,
            )  # fmt: skip
            save_pretrained(pre, path)
            meta, prompt = {k: v for k, v in pre.metadata.items() if k != "task"}, pre.prompt
        sources[name] = {"dir": str(path), **meta, "task": task.name}
        sources[name]["prompt_norm_per_token"] = float(np.linalg.norm(prompt, axis=1).mean())
        print(name, json.dumps({k: v for k, v in sources[name].items() if k != "dir"}), flush=True)

    registry = PromptRegistry(":memory:") if args.via_registry else None
    service = LocalClient(HFBackend(), registry=registry)
    std = service.model_info().embedding_std
    start_a = InitialPrompt("run", path=sources["agnews4"]["dir"])
    if registry is not None:
        prompt, model, meta = publication(sources["agnews4"]["dir"])
        shared_id = publish(registry, prompt, model=model, metadata=meta)[0].id
        start_a = InitialPrompt("prompt", prompt_id=shared_id)
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        srng = np.random.Generator(np.random.PCG64(seed))
        local = {c: list(v) for c, v in pools.items()}
        split = (take(local, (2, 3), args.k, srng), take(local, (2, 3), args.k, srng))
        cfg = TuneConfig(
            n_tokens=args.n_tokens, dim=args.dim, popsize=args.popsize, budget=args.budget,
            eval_every=args.eval_every, seed=seed,
        )  # fmt: skip
        mix_cfg = TuneConfig(**{**cfg.as_dict(), "method": "mixture"})
        inits = {
            "vocab": (cfg, InitialPrompt("vocab_sample", seed=seed)),
            "pretrained": (cfg, start_a),
            "mixture": (
                mix_cfg,
                InitialPrompt(
                    "mix", sources=(sources["agnews4"]["dir"], sources["world_sports"]["dir"])
                ),
            ),
        }
        for name, (c, init) in inits.items():
            row = {"seed": seed, "start": name, **run_one(service, split, heldout, c, init)}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "curve"}), flush=True)
        vocab = next(r for r in rows if r["seed"] == seed and r["start"] == "vocab")
        for r in rows:
            if r["seed"] == seed:
                r["calls_to_vocab_final_dev"] = calls_to_reach(r["curve"], vocab["dev_best"])
    out = {"args": {k: str(v) for k, v in vars(args).items()}, "embedding_std": std}
    out.update({"sources": sources, "runs": rows})
    (args.out / "transfer.json").write_text(json.dumps(out, indent=2))
    for start in ("vocab", "pretrained", "mixture"):
        accs = [r["heldout_acc"] for r in rows if r["start"] == start]
        reach = [r["calls_to_vocab_final_dev"] for r in rows if r["start"] == start]
        print(f"{start:10s} held-out acc {np.mean(accs):.3f} +- {np.std(accs):.3f} {accs} "
              f"calls to vocab's final dev: {reach}")  # fmt: skip


if __name__ == "__main__":
    main()
