"""The data splits behind the embedded default's quality figures (docs/server.md).

One definition, used by ``scripts/fit_mlm_head.py`` (unlabelled text for the MLM head) and
``benchmarks/embedded_quality.py`` (k-shot train/dev, held-out evaluation):

- Rows are numbered from 0, the first data row after the header of
  ``../shared/data/<task>/train.tsv``.
- **Held-out evaluation** (``HELDOUT``): AG News rows 9,001-10,000 (the last 1,000 rows);
  SST-2: the first 1,000 rows at index >= 50,000 whose sentence has at least
  ``SST2_MIN_WORDS`` whitespace-separated words (phrases such as "kids , spirit" carry
  little sentiment).
- **Pool** (``pool_rows``): every row before the held-out region (AG News 0-9,000; SST-2
  0-49,999) whose text neither contains nor is contained in any held-out text of that task
  (SST-2 rows are phrases of the same sentences, so plain row-disjointness is not enough).
  k-shot train/dev sets are sampled from the pool (SST-2: among rows with at least
  ``SST2_MIN_WORDS`` words); the MLM head is fitted on pool text only, without labels.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
SST2_MIN_WORDS = 6
HELDOUT_SIZE = 1000


@dataclass(frozen=True)
class Row:
    index: int
    text: str
    label: str


def _data_dir(data_dir: Path | None) -> Path:
    return data_dir if data_dir is not None else DATA_DIR


@lru_cache(maxsize=4)
def read_task(task: str, data_dir: Path | None = None) -> tuple[Row, ...]:
    path = _data_dir(data_dir) / task / "train.tsv"
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        next(reader)
        return tuple(Row(i, r[0].strip(), r[1].strip()) for i, r in enumerate(reader))


def heldout_region_start(task: str) -> int:
    return {"agnews": 9001, "sst2": 50000}[task]


@lru_cache(maxsize=4)
def heldout_rows(task: str, data_dir: Path | None = None) -> tuple[Row, ...]:
    rows = read_task(task, data_dir)
    start = heldout_region_start(task)
    tail = [r for r in rows[start:] if task != "sst2" or len(r.text.split()) >= SST2_MIN_WORDS]
    return tuple(tail[:HELDOUT_SIZE])


def _overlaps(text: str, held: tuple[str, ...]) -> bool:
    padded = f" {text} "
    return any(h in padded or padded in h for h in held)


@lru_cache(maxsize=4)
def pool_rows(task: str, data_dir: Path | None = None) -> tuple[Row, ...]:
    rows = read_task(task, data_dir)
    held = tuple(f" {r.text} " for r in heldout_rows(task, data_dir))
    return tuple(r for r in rows[: heldout_region_start(task)] if not _overlaps(r.text, held))
