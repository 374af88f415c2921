"""The tokenizer cache is bounded in bytes, stays LRU, and charges what entries really cost
(issue 8, defect 8). No model needed: the cache is its own class."""

from __future__ import annotations

import gc
import random
import sys
import tracemalloc
from array import array

import pytest

from bbt.server._tokcache import (
    DEFAULT_TOKENIZER_CACHE_BYTES,
    TokenCache,
    entry_bytes,
)


def _ids(n: int, seed: int = 0) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 30000) for _ in range(n)]


def _size(text: str, n_ids: int) -> int:
    return entry_bytes(text, array("i", _ids(n_ids)))


def test_round_trip_and_stats() -> None:
    cache = TokenCache(max_bytes=1 << 20)
    assert cache.get("a") is None
    cache.put("a", [101, 2023, 102])
    assert cache.get("a") == (101, 2023, 102)
    assert isinstance(cache.get("a"), tuple)
    assert (cache.hits, cache.misses, len(cache)) == (2, 1, 1)
    assert cache.nbytes == _size("a", 3)


def test_lru_order_is_kept() -> None:
    size = _size("x0", 10)
    cache = TokenCache(max_bytes=3 * size, max_entries=None)
    for k in range(3):
        cache.put(f"x{k}", _ids(10))
    assert cache.get("x0") is not None  # x0 is now the most recent; x1 the least
    cache.put("x3", _ids(10))
    assert "x1" not in cache
    assert all(f"x{k}" in cache for k in (0, 2, 3))
    assert cache.evictions == 1


def test_byte_bound_holds_under_long_adversarial_entries() -> None:
    bound = 1 << 20
    cache = TokenCache(max_bytes=bound, max_entries=65536)
    for k in range(2000):
        text = f"{k:05d}" + "!?#$%&*+-/" * 200  # distinct, ~one token per character
        cache.put(text, range(1000 + k, 3000 + k))
        assert cache.nbytes <= bound
    # About 10 KB each (a 2,000-character key, 2,000 ids of 4 bytes): ~100 fit, not 2,000.
    assert 80 <= len(cache) <= 110
    assert cache.evictions == 2000 - len(cache)


def test_charged_bytes_are_exact_across_overwrites_and_evictions() -> None:
    cache = TokenCache(max_bytes=50 * _size("k00", 40), max_entries=None)
    rng = random.Random(2)
    for _ in range(500):
        k = f"k{rng.randrange(80):02d}"
        cache.put(k, _ids(rng.randrange(1, 80)))
    expected = sum(entry_bytes(k, cache._data[k][0]) for k in cache._data)
    assert cache.nbytes == expected


def test_entry_bound_is_still_honoured() -> None:
    cache = TokenCache(max_bytes=DEFAULT_TOKENIZER_CACHE_BYTES, max_entries=5)
    for k in range(20):
        cache.put(str(k), [k])
    assert len(cache) == 5
    assert [str(k) for k in range(15, 20)] == list(cache._data)


def test_too_big_or_disabled_is_not_stored() -> None:
    cache = TokenCache(max_bytes=_size("big", 100) - 1)
    cache.put("big", _ids(100))
    assert len(cache) == 0
    assert cache.nbytes == 0
    off = TokenCache(max_bytes=0)
    off.put("a", [1])
    assert off.get("a") is None


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        TokenCache(max_bytes=-1)
    with pytest.raises(ValueError, match="max_entries"):
        TokenCache(max_entries=-1)


def test_ids_are_stored_compactly() -> None:
    """A 2,000-token entry costs ~10 KB, not the ~74 KB of a tuple of Python ints."""
    text = "#" * 2000
    ids = _ids(2000)
    as_tuple = sys.getsizeof(text) + sys.getsizeof(tuple(ids)) + sum(sys.getsizeof(i) for i in ids)
    cache = TokenCache()
    cache.put(text, ids)
    assert cache.nbytes < 11_000
    assert as_tuple > 6 * cache.nbytes


@pytest.mark.parametrize(("n", "n_ids"), [(20_000, 25), (3_000, 500)])
def test_charged_bytes_match_real_allocations(n: int, n_ids: int) -> None:
    """What the cache charges is what it allocates (tracemalloc), within a few percent, and
    not less: the overhead estimate keeps the bound a real bound."""
    rng = random.Random(3)
    texts = [f"{k} " + "w" * rng.randrange(50, 150) for k in range(n)]
    ids = [_ids(n_ids, k) for k in range(n)]
    cache = TokenCache(max_bytes=1 << 40, max_entries=None)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for text, row in zip(texts, ids, strict=True):
            cache.put(text, row)
        allocated = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    # The keys were allocated before tracing began; the cache keeps them alive, so count them.
    real = allocated + sum(sys.getsizeof(t) for t in texts)
    assert real <= cache.nbytes * 1.02
    assert real >= cache.nbytes * 0.9
