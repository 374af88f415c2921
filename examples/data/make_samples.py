"""Rebuild the small samples in this folder from the full training files (../shared/data).

    python examples/data/make_samples.py /path/to/shared/data

SST-2: 100 rows per class among rows of at least 8 words (GLUE's training split also holds
short phrases); AG News: 50 rows per class. Rows are drawn with a fixed seed.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def sample(src: Path, dst: Path, text_col: str, per_class: int, min_words: int) -> None:
    with src.open(encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    rng = random.Random(20220101)
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if len(row[text_col].split()) >= min_words:
            by_label.setdefault(row["label"], []).append(row)
    out = []
    for label in sorted(by_label):
        out.extend(rng.sample(by_label[label], per_class))
    rng.shuffle(out)
    with dst.open("w", encoding="utf-8", newline="") as fh:
        fh.write(f"{text_col}\tlabel\n")
        for row in out:
            fh.write(f"{row[text_col].strip()}\t{row['label']}\n")


if __name__ == "__main__":
    root = Path(sys.argv[1])
    sample(root / "sst2" / "train.tsv", HERE / "sst2.tsv", "sentence", 100, 8)
    sample(root / "agnews" / "train.tsv", HERE / "agnews.tsv", "text", 50, 0)
