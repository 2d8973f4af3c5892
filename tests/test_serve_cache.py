"""The explorer's LRU cache with a byte budget."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from cnnviz.serve.cache import ByteBudgetCache, size_of


def test_size_of_counts_the_data() -> None:
    assert size_of(torch.zeros(10, 10)) == 400
    assert size_of(torch.zeros(10, dtype=torch.float16)) == 20
    assert size_of(np.zeros((4, 4), np.uint8)) == 16
    assert size_of(b"abc") == 3
    assert size_of({"a": torch.zeros(4)}) == 64 + 16
    assert size_of([b"ab", b"cd"]) == 64 + 4


def test_least_recently_used_goes_first() -> None:
    cache = ByteBudgetCache(budget=300)
    for key in "abc":
        cache.put(key, b"x" * 100)
    assert cache.get("a") == b"x" * 100  # a is now the most recent
    cache.put("d", b"y" * 100)  # evicts b, the least recently used
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "abcd" if k in cache}
    stats = cache.stats()
    assert (stats.entries, stats.bytes, stats.evictions) == (3, 300, 1)
    assert stats.peak_bytes == 300 and stats.hits == 1


def test_the_budget_holds_and_big_values_pass_through() -> None:
    cache = ByteBudgetCache(budget=250)
    made = cache.get_or_make("big", lambda: b"z" * 1000)
    assert made == b"z" * 1000 and "big" not in cache  # larger than the whole budget
    cache.put("a", b"a" * 200)
    cache.put("a", b"a" * 100)  # replaced: its old size no longer counts
    cache.put("b", b"b" * 150)
    assert cache.stats().bytes == 250 and "a" in cache and "b" in cache
    cache.put("c", b"c", size=10)
    assert cache.stats().bytes <= 250 and "a" not in cache


def test_get_or_make_makes_once() -> None:
    cache = ByteBudgetCache(budget=1000)
    calls: list[int] = []

    def make() -> bytes:
        calls.append(1)
        return b"v"

    assert cache.get_or_make("k", make) == cache.get_or_make("k", make) == b"v"
    assert len(calls) == 1


def test_threads_share_it_safely() -> None:
    cache = ByteBudgetCache(budget=64 * 50)

    def work(offset: int) -> None:
        for i in range(500):
            cache.put((offset, i % 97), b"q" * 64)
            cache.get((offset, (i * 7) % 97))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stats = cache.stats()
    assert stats.bytes == 64 * stats.entries <= 64 * 50


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="budget"):
        ByteBudgetCache(budget=-1)
