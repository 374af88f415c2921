"""Rebuild the small samples in this folder from the full training files (../shared/data).

    python examples/data/make_samples.py /path/to/shared/data

SST-2: 100 rows per class among rows of at least 8 words (GLUE's training split also holds
short phrases); AG News: 50 rows per class. Rows are drawn with a fixed seed.

``agnews_test.tsv`` is the demo's held-out set: 50 rows per class from AG News rows
9,001-10,000, the region that ``scripts/quality_data.py`` keeps out of every k-shot draw, and
none of whose texts overlaps a text of ``agnews.tsv`` (which was drawn from the whole file
before that region existed), so a prompt tuned on ``agnews.tsv`` never saw a row it is scored on.
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20220101
#: First row (0-based, after the header) of AG News' held-out region; scripts/quality_data.py.
AGNEWS_HELDOUT_START = 9001


def _read(src: Path) -> list[dict[str, str]]:
    with src.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))


def _write(dst: Path, text_col: str, rows: list[dict[str, str]]) -> None:
    with dst.open("w", encoding="utf-8", newline="") as fh:
        fh.write(f"{text_col}\tlabel\n")
        for row in rows:
            fh.write(f"{row[text_col].strip()}\t{row['label']}\n")


def _draw(
    rows: list[dict[str, str]], text_col: str, per_class: int, min_words: int
) -> list[dict[str, str]]:
    # The same seed, draw and order as the first version of this script: the shipped samples
    # stay byte for byte what they were.
    rng = random.Random(SEED)
    by_label: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        if len(row[text_col].split()) >= min_words:
            by_label.setdefault(row["label"], []).append(row)
    out = []
    for label in sorted(by_label):
        out.extend(rng.sample(by_label[label], per_class))
    rng.shuffle(out)
    return out


def sample(src: Path, dst: Path, text_col: str, per_class: int, min_words: int) -> None:
    _write(dst, text_col, _draw(_read(src), text_col, per_class, min_words))


def _overlaps(text: str, others: list[str]) -> bool:
    return any(text in o or o in text for o in others)


def heldout(src: Path, tuned_on: Path, dst: Path, text_col: str, per_class: int) -> None:
    """``per_class`` rows per class from the held-out region, text-disjoint from ``tuned_on``."""
    seen = [row[text_col].strip() for row in _read(tuned_on)]
    region = _read(src)[AGNEWS_HELDOUT_START:]
    rows = [r for r in region if not _overlaps(r[text_col].strip(), seen)]
    _write(dst, text_col, _draw(rows, text_col, per_class, 0))


if __name__ == "__main__":
    root = Path(sys.argv[1])
    sample(root / "sst2" / "train.tsv", HERE / "sst2.tsv", "sentence", 100, 8)
    sample(root / "agnews" / "train.tsv", HERE / "agnews.tsv", "text", 50, 0)
    heldout(
        root / "agnews" / "train.tsv", HERE / "agnews.tsv", HERE / "agnews_test.tsv", "text", 50
    )
