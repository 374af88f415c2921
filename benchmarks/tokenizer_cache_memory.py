"""Resident memory of HFBackend's tokenizer cache under adversarial texts (issue 8, defect 8).

Feeds distinct 2,000-character texts of about one token per character (punctuation marks,
which BERT's tokenizer splits one by one) through ``HFBackend.encode`` - the path every
``logits`` call takes to tokenise its texts - and prints, at each checkpoint, the process's
resident set size and the cache's own byte count and entries. Two variants, each in a fresh
process so that their RSS figures do not mix:

* ``old``: the former cache, an OrderedDict of tuples of Python ints bounded at 65,536
  entries (reproduced here; the byte count is estimated the same way the new cache counts);
* ``new``: the current :class:`bbt.server.hf.TokenCache` (64 MiB by default).

Usage::

    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 nice -n 5 python benchmarks/tokenizer_cache_memory.py
    python benchmarks/tokenizer_cache_memory.py --smoke        # seconds, for the test suite
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import write_result

OLD_MAX_ENTRIES = 65536
_MARKS = "!?#$%&*+-/<=>@^~;:"
_TEXT_CHARS = 2000


class LegacyCache:
    """The cache as it was before the byte bound: tuples of ints, at most 65,536 entries."""

    def __init__(self, max_entries: int = OLD_MAX_ENTRIES) -> None:
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[int, ...]] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = 0
        self.evictions = 0

    @staticmethod
    def _cost(text: str, ids: tuple[int, ...]) -> int:
        from bbt.server.hf import ENTRY_OVERHEAD_BYTES

        # Ids above 256 are separate int objects: 28 bytes each besides the tuple's pointer.
        ints = sum(sys.getsizeof(i) for i in ids if not -5 <= i <= 256)
        return sys.getsizeof(text) + sys.getsizeof(ids) + ints + ENTRY_OVERHEAD_BYTES

    def __len__(self) -> int:
        return len(self._data)

    def get(self, text: str) -> tuple[int, ...] | None:
        with self._lock:
            hit = self._data.get(text)
            if hit is not None:
                self._data.move_to_end(text)
            return hit

    def put(self, text: str, ids: Iterable[int]) -> None:
        row = tuple(ids)
        with self._lock:
            self._data[text] = row
            self.nbytes += self._cost(text, row)
            while len(self._data) > self.max_entries:
                old_text, old_row = self._data.popitem(last=False)
                self.nbytes -= self._cost(old_text, old_row)
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self.nbytes = 0


def adversarial_texts(n: int, mask: str, seed: int = 0) -> Iterable[str]:
    """Distinct texts of 2,000 characters, the mask first (truncation keeps it)."""
    rng = random.Random(seed)
    for k in range(n):
        head = f"{mask} {k:07d} "
        yield head + "".join(rng.choices(_MARKS, k=_TEXT_CHARS - len(head)))


def rss_mib() -> float:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_child(variant: str, checkpoints: list[int], threads: int) -> list[dict[str, Any]]:
    """Measure one variant in this process; one row per checkpoint."""
    from bbt.server.hf import HFBackend

    backend = HFBackend(dtype="float32", num_threads=threads)
    cache: Any = backend.tokenizer_cache
    if variant == "old":
        cache = LegacyCache()
        backend._cache = cache  # the former behaviour, same tokenisation path
    rows = []
    fed = 0
    texts = iter(adversarial_texts(max(checkpoints), backend.info.mask_token))
    tokens = 0
    started = time.perf_counter()
    for target in sorted(checkpoints):
        while fed < target:
            text = next(texts)
            backend.encode(text)  # tokenises (and caches) as every logits call does
            tokens += len(backend._body_ids(text))  # untruncated ids (a cache hit)
            fed += 1
        rows.append(
            {
                "variant": variant,
                "texts": fed,
                "entries": len(cache),
                "cache_mib": cache.nbytes / 2**20,
                "rss_mib": rss_mib(),
                "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                "seconds": time.perf_counter() - started,
                "tokens_per_text": (tokens / fed) if fed else 0.0,
            }
        )
    backend.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (seconds), for CI")
    parser.add_argument(
        "--checkpoints", type=int, nargs="+", default=[0, 10_000, 50_000], help="texts fed"
    )
    parser.add_argument("--variants", nargs="+", choices=["old", "new"], default=["old", "new"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tokenizer: 1)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes")
    parser.add_argument("--child", choices=["old", "new"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    checkpoints = [0, 20, 60] if args.smoke else args.checkpoints

    if args.child:
        print(json.dumps(run_child(args.child, checkpoints, args.threads)))
        return 0

    rows: list[dict[str, Any]] = []
    for variant in args.variants:
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--child",
            variant,
            "--threads",
            str(args.threads),
            "--checkpoints",
            *map(str, checkpoints),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return 1
        rows.extend(json.loads(proc.stdout.strip().splitlines()[-1]))

    print("| cache | texts fed | entries | cache's own bytes (MiB) | process RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        label = "old: 65,536 entries of int tuples" if r["variant"] == "old" else "new: 64 MiB"
        print(
            f"| {label} | {r['texts']:,} | {r['entries']:,} | {r['cache_mib']:.1f} "
            f"| {r['rss_mib']:.0f} |"
        )
    fed = [r for r in rows if r["texts"]]
    if fed:
        print(f"tokens per text (mean, before truncation): {fed[-1]['tokens_per_text']:.0f}")
    name = "tokenizer_cache_memory" + ("_smoke" if args.smoke else "")
    write_result(name, {"checkpoints": checkpoints, "rows": rows}, args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
