"""An LRU cache of token ids per text, bounded in bytes (issue 8, defect 8).

A tuner sends the same training texts every generation, so the Hugging Face backend
remembers each text's token ids. Bounding that memory by a count of entries bounds nothing:
one entry can be a 2,000-character text of 2,000 tokens, and as a tuple of Python ints that
is about 72 KB (8 bytes of pointer plus a 28-byte int object per id above 256), so 65,536 such
entries would be 4.7 GB. Here the ids are stored as a compact ``array('i')`` (4 bytes per id)
and every entry is charged its real size, so the cache never holds more than ``max_bytes``
(to within the estimate of the dict's own per-entry overhead).

Not torch-specific and free of heavy imports, so it is tested without a model.
"""

from __future__ import annotations

import sys
import threading
from array import array
from collections import OrderedDict
from collections.abc import Iterable

#: Default byte bound of the tokenizer cache: 64 MiB holds about 90,000 SST-2-sized texts
#: (~100 characters, ~25 tokens: ~700 bytes each) and still about 5,000 adversarial
#: 2,000-character texts of 2,000 tokens each.
DEFAULT_TOKENIZER_CACHE_BYTES = 64 * 1024 * 1024
#: Default entry bound (the former only bound), kept so that small texts behave as before.
DEFAULT_TOKENIZER_CACHE_ENTRIES = 65536
#: Bytes charged per entry beyond its key and its id array: the OrderedDict's hash-table slot
#: and index (amortised over its growth), its linked-list node and the (ids, size) pair.
#: Measured with tracemalloc at 130-155 bytes on CPython 3.11; rounded up so that the bound
#: holds (tests/server/test_tokcache.py checks it).
ENTRY_OVERHEAD_BYTES = 160

_ID_TYPECODE = "i"  # C int, 4 bytes: every tokenizer vocabulary fits


def entry_bytes(text: str, ids: array[int]) -> int:
    """What one entry costs: the key string, the id array (header and buffer), the dict."""
    return sys.getsizeof(text) + sys.getsizeof(ids) + ENTRY_OVERHEAD_BYTES


class TokenCache:
    """Thread-safe LRU map text -> token ids, bounded in bytes and in entries.

    Args:
        max_bytes: most bytes held (see :func:`entry_bytes`); 0 disables the cache. An entry
            larger than the whole bound is not stored.
        max_entries: most entries held; None: no count bound.
    """

    def __init__(
        self,
        max_bytes: int = DEFAULT_TOKENIZER_CACHE_BYTES,
        max_entries: int | None = DEFAULT_TOKENIZER_CACHE_ENTRIES,
    ) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be non-negative, got {max_bytes}")
        if max_entries is not None and max_entries < 0:
            raise ValueError(f"max_entries must be non-negative, got {max_entries}")
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._data: OrderedDict[str, tuple[array[int], int]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    @property
    def nbytes(self) -> int:
        """Bytes charged for the entries held now."""
        return self._nbytes

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, text: object) -> bool:
        return text in self._data

    def get(self, text: str) -> tuple[int, ...] | None:
        """The ids cached for ``text`` (marking it most recently used), or None."""
        with self._lock:
            hit = self._data.get(text)
            if hit is None:
                self.misses += 1
                return None
            self._data.move_to_end(text)
            self.hits += 1
            ids = hit[0]
        # Outside the lock: a few microseconds for a long text, and ints are immutable.
        return tuple(ids)

    def put(self, text: str, ids: Iterable[int]) -> None:
        """Remember ``ids`` for ``text``; evict least recently used entries to fit."""
        packed = array(_ID_TYPECODE, ids)
        size = entry_bytes(text, packed)
        limit_entries = self.max_entries
        if size > self.max_bytes or limit_entries == 0:
            return
        with self._lock:
            old = self._data.pop(text, None)
            if old is not None:
                self._nbytes -= old[1]
            self._data[text] = (packed, size)
            self._nbytes += size
            while self._nbytes > self.max_bytes or (
                limit_entries is not None and len(self._data) > limit_entries
            ):
                _, (_, freed) = self._data.popitem(last=False)
                self._nbytes -= freed
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._nbytes = 0


__all__ = [
    "DEFAULT_TOKENIZER_CACHE_BYTES",
    "DEFAULT_TOKENIZER_CACHE_ENTRIES",
    "ENTRY_OVERHEAD_BYTES",
    "TokenCache",
    "entry_bytes",
]
