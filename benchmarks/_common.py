"""Helpers shared by the benchmark scripts: data splits, the model, result files.

Data: the splits of ``scripts/quality_data.py`` (the embedded-quality benchmark's), so every
figure here is measured on the same held-out rows as docs/server.md's: k-shot train and dev
sets are drawn from the pool, which shares no text with the held-out rows.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# A script that imports this module finds scripts/ (quality_data) and this checkout's bbt
# (before an installed one): the import header every benchmark needs, written once.
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import quality_data  # noqa: E402
from _machine import cpu_flags as machine_cpu_flags  # noqa: E402
from _machine import machine, write_json  # noqa: E402

#: The paper's templates (Sun et al., 2022, Table 6) with the model's mask token filled in
#: later, and the label order of ``../shared/data``. Both implementations use these texts.
TEMPLATES = {"sst2": "{text} . It was {mask} .", "agnews": "{mask} News: {text}"}
LABELS = {"sst2": ("0", "1"), "agnews": ("World", "Sports", "Business", "Sci/Tech")}


#: SST-2-like movie review sentences (written for the wire benchmarks): the real set's
#: sentences average about 100 characters, and so do these.
SENTENCES = (
    "a gripping , beautifully shot drama that never lets its big ideas smother the characters",
    "the jokes land with a thud and the plot wanders off long before the final reel",
    "an uneven but often touching portrait of a family coming apart at the seams",
    "it is hard to remember the last time a thriller felt this lazy and this long",
    "the performances are terrific , and the script gives every one of them room to breathe",
    "a tired retread of better films , padded with scenes that go nowhere in particular",
    "funny , warm and smarter than it has any right to be",
    "even the talented cast cannot rescue this muddled , joyless mess of a comedy",
)


def sentences(count: int) -> list[str]:
    """``count`` of :data:`SENTENCES`, cycling (no template)."""
    return [SENTENCES[i % len(SENTENCES)] for i in range(count)]


def pool_rows(task: str) -> tuple[quality_data.Row, ...]:
    """The rows k-shot sets are drawn from (no text shared with the held-out rows); for
    SST-2 without the short phrases, which carry little sentiment (see quality_data)."""
    pool: tuple[quality_data.Row, ...] = quality_data.pool_rows(task)
    if task == "sst2":
        pool = tuple(r for r in pool if len(r.text.split()) >= quality_data.SST2_MIN_WORDS)
    return pool


def k_shot(task: str, k: int, seed: int) -> tuple[list[quality_data.Row], list[quality_data.Row]]:
    """k per class for train and the next k per class for dev, the way the paper's code
    draws them (``construct_true_few_shot_data``): shuffle the pool's indices with a seeded
    NumPy RNG and walk them, filling train first, then dev."""
    pool = pool_rows(task)
    order = np.random.RandomState(seed).permutation(len(pool))
    train: list[quality_data.Row] = []
    dev: list[quality_data.Row] = []
    counts_train = dict.fromkeys(LABELS[task], 0)
    counts_dev = dict.fromkeys(LABELS[task], 0)
    for i in order:
        row = pool[int(i)]
        if counts_train[row.label] < k:
            train.append(row)
            counts_train[row.label] += 1
        elif counts_dev[row.label] < k:
            dev.append(row)
            counts_dev[row.label] += 1
        if len(train) + len(dev) == 2 * k * len(LABELS[task]):
            break
    return train, dev


def sample_kshot(
    task: str, shots: int, seed: int
) -> tuple[list[quality_data.Row], list[quality_data.Row]]:
    """``shots`` per class for train and another ``shots`` per class for dev, by seed: the
    draw of the embedded-quality benchmark (Python's RNG, class by class; its published
    figures were measured on these sets, so it stays beside the paper's :func:`k_shot`)."""
    pool = pool_rows(task)
    rng = random.Random(seed)
    train: list[quality_data.Row] = []
    dev: list[quality_data.Row] = []
    for label in LABELS[task]:
        rows = [r for r in pool if r.label == label]
        picked = rng.sample(rows, 2 * shots)
        train += picked[:shots]
        dev += picked[shots:]
    rng.shuffle(train)
    rng.shuffle(dev)
    return train, dev


def sample_rows(task: str, count: int, seed: int) -> list[quality_data.Row]:
    """``count`` rows from before the held-out region, by seed: realistic inputs for
    measurements that train nothing (no overlap check, so it is fast)."""
    rows = quality_data.read_task(task)[: quality_data.heldout_region_start(task)]
    if task == "sst2":
        rows = tuple(r for r in rows if len(r.text.split()) >= quality_data.SST2_MIN_WORDS)
    picked = np.random.RandomState(seed).choice(len(rows), size=count, replace=False)
    return [rows[int(i)] for i in picked]


def heldout(task: str, size: int) -> list[quality_data.Row]:
    rows = quality_data.heldout_rows(task)
    if size > len(rows):
        raise SystemExit(f"only {len(rows)} held-out rows for {task}")
    return list(rows[:size])


def render(task: str, rows: list[quality_data.Row], mask: str) -> list[str]:
    return [TEMPLATES[task].format(text=r.text, mask=mask) for r in rows]


def labels(task: str, rows: list[quality_data.Row]) -> np.ndarray[Any, Any]:
    index = {lab: i for i, lab in enumerate(LABELS[task])}
    return np.array([index[r.label] for r in rows], dtype=np.int64)


def to_examples(task: str, rows: list[quality_data.Row], preset: Any = None) -> list[Any]:
    """The same rows as ``bbt.tuner.Example`` for the template field of ``preset`` (a
    ``bbt.tuner.Task``; the task's own preset by default)."""
    from bbt.tuner import Example, get_preset

    field = (preset or get_preset(task)).fields[0]
    y = labels(task, rows)
    return [Example({field: r.text}, int(lab)) for r, lab in zip(rows, y, strict=True)]


@functools.lru_cache(maxsize=2)
def load_backend(dtype: str = "bfloat16", threads: int = 2, head: str = "auto") -> Any:
    """The embedded default model (MiniLM, bbt's default head) in this process, loaded once
    per process and settings (the smoke tests run several scripts in one process)."""
    from bbt.server.hf import HFBackend

    return HFBackend(head=head, dtype=dtype, num_threads=threads)  # type: ignore[arg-type]


def accuracy(logits: np.ndarray[Any, Any], y: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """Accuracy of each prompt; logits [P, B, C]."""
    acc: np.ndarray[Any, Any] = (logits.argmax(axis=2) == y[None, :]).mean(axis=1)
    return acc


#: The tuning options the benchmarks take on their command lines, by their TuneConfig names.
TUNE_ARGS = ("n_tokens", "dim", "popsize", "sigma", "budget", "loss", "eval_every")


def tune_settings(args: argparse.Namespace, names: tuple[str, ...] = TUNE_ARGS) -> dict[str, Any]:
    """``args``' tuning options (``names``) as TuneConfig keyword arguments: one mapping of
    flags to settings for every benchmark, and for the reference loops that mirror it."""
    return {name: getattr(args, name) for name in names}


def args_record(args: argparse.Namespace) -> dict[str, Any]:
    """The parsed flags, for a result file (paths as strings)."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}


def write_result(name: str, record: dict[str, Any], out_dir: Path | None = None) -> Path:
    """Write ``record`` (with the command, machine and date) to ``<out_dir>/<name>.json``."""
    out = out_dir or RESULTS
    out.mkdir(parents=True, exist_ok=True)
    full = {
        "command": " ".join(["python", *sys.argv]),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": machine(),
        **record,
    }
    return write_json(out / f"{name}.json", full)


#: The CPU flags the model benchmarks report (sorted): the compute path's and the int8 ones.
EMBEDDED_FLAGS = ("amx_bf16", "amx_int8", "avx2", "avx512_bf16", "avx512_vnni", "avx512f")


def cpu_flags() -> list[str]:
    """The CPU flags that decide the compute path (AVX2, AVX-512, native bfloat16)."""
    flags: list[str] = machine_cpu_flags(EMBEDDED_FLAGS)
    return flags


def default_dtype() -> str:
    """bfloat16 where the CPU runs it natively (AMX or AVX-512 BF16), else float32: torch
    emulates bfloat16 elsewhere, several times slower than float32."""
    flags = set(cpu_flags())
    return "bfloat16" if flags & {"amx_bf16", "avx512_bf16"} else "float32"


# ---------------------------------------------------------------- the tuning benchmarks' harness


def bench_parser(doc: str | None, **defaults: Any) -> argparse.ArgumentParser:
    """A parser with the flags every tuning benchmark takes (task, seeds, k-shot sizes, the
    run's settings, the model's dtype and threads, the held-out rows, where results go);
    ``defaults`` overrides their defaults by name (``task="agnews"``, ``popsize=10``...)."""
    ap = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    ap.add_argument("--task", choices=sorted(LABELS), default="sst2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shots", type=int, default=4)
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--n-tokens", type=int, default=10)
    ap.add_argument("--dim", type=int, default=200)
    ap.add_argument("--popsize", type=int, default=20)
    ap.add_argument("--init", default="vocab:1000")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--heldout", type=int, default=100)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--out-dir", type=Path, default=RESULTS)
    ap.set_defaults(**defaults)
    return ap


def tune_config(args: argparse.Namespace, names: tuple[str, ...], **overrides: Any) -> Any:
    """The ``bbt.tuner.TuneConfig`` of ``args``' tuning options ``names`` (see
    :func:`tune_settings`), with ``overrides`` (a seed, a method...)."""
    from bbt.tuner import TuneConfig

    return TuneConfig(**tune_settings(args, names), **overrides)


def kshot_examples(task_name: str, shots: int, seed: int, task: Any) -> tuple[Any, Any]:
    """Seed ``seed``'s k-shot train and dev sets (:func:`sample_kshot`) as examples of the
    ``bbt.tuner.Task`` ``task``."""
    train_rows, dev_rows = sample_kshot(task_name, shots, seed)
    return to_examples(task_name, train_rows, task), to_examples(task_name, dev_rows, task)


def heldout_scorer(
    service: Any, task_name: str, task: Any, size: int
) -> Callable[[np.ndarray[Any, Any]], float]:
    """The accuracy of one prompt [n, H] on the first ``size`` held-out rows, through
    ``service`` (the task's template and verbalizer, as the product renders them)."""
    from bbt.tuner import verbalizer_ids

    info = service.model_info()
    field, limit = task.fields[0], info.limits.max_text_chars
    held = quality_data.heldout_rows(task_name)[:size]
    xh = [task.render({field: r.text}, info.mask_token, limit) for r in held]
    yh = labels(task_name, list(held))
    cand = verbalizer_ids(task, service)

    def score(prompt: np.ndarray[Any, Any]) -> float:
        return float(accuracy(service.logits(prompt[None], xh, cand), yh)[0])

    return score


def write_bench_result(
    tag: str, args: argparse.Namespace, started: float, record: dict[str, Any]
) -> float:
    """Write a tuning benchmark's result ``<args.out_dir>/<tag>.json``: the flags, the CPU
    flags, ``record`` and the wall seconds since ``started`` (``time.time()``); returns them."""
    wall = time.time() - started
    full = {"args": args_record(args), "cpu_flags": cpu_flags(), **record, "wall_seconds": wall}
    write_result(tag, full, args.out_dir)
    return wall


def smoke_sizes(args: argparse.Namespace, **sizes: Any) -> None:
    """Shrink ``args`` to ``--smoke`` sizes (seconds, for CI): the first seed only, and
    ``sizes`` by flag name."""
    args.seeds = args.seeds[:1]
    for name, value in sizes.items():
        setattr(args, name, value)


def table_head(caption: str, header: str, aligns: str, note: str | None = None) -> None:
    """Print a result table's caption (with the CPU flags), an optional ``note`` line, and
    the markdown ``header`` (its columns split by " | "), aligned by ``aligns`` (``"-"``
    left, ``":"`` right, one character a column)."""
    print(f"\n{caption}; CPU flags {' '.join(cpu_flags())}")
    if note is not None:
        print(note)
    print(f"| {header} |")
    print("|" + "|".join("---:" if a == ":" else "---" for a in aligns) + "|")
