"""A least-recently-used cache with a byte budget, shared by the explorer's request threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch

T = TypeVar("T")


def size_of(value: object) -> int:
    """Bytes ``value`` holds, roughly: tensors and arrays by their data, bytes by length,
    containers by their items, anything with an ``nbytes`` attribute by it; 64 otherwise."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, bytes | bytearray | np.ndarray):
        return int(value.nbytes if isinstance(value, np.ndarray) else len(value))
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return 64 + sum(size_of(v) for v in value.values())
    if isinstance(value, list | tuple):
        return 64 + sum(size_of(v) for v in value)
    nbytes = getattr(value, "nbytes", None)
    if isinstance(nbytes, int):
        return nbytes
    return 64


@dataclass(frozen=True)
class CacheStats:
    """What the cache holds and has done: entries, bytes held, budget, hits, misses, evictions."""

    entries: int
    bytes: int
    budget: int
    peak_bytes: int
    hits: int
    misses: int
    evictions: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class ByteBudgetCache:
    """``key → value`` kept while the values' total size (:func:`size_of`) stays within
    ``budget`` bytes; the least recently used entries go first. A value larger than the whole
    budget is returned but not kept. Thread-safe.

    Example:
        >>> cache = ByteBudgetCache(budget=1000)
        >>> first = cache.get_or_make("a", lambda: b"x" * 600)
        >>> second = cache.get_or_make("b", lambda: b"y" * 600)
        >>> "a" in cache, "b" in cache   # a was evicted to make room for b
        (False, True)
    """

    def __init__(self, budget: int) -> None:
        if budget < 0:
            raise ValueError(f"budget must be ≥ 0 bytes, got {budget}")
        self.budget = budget
        self._items: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._peak = 0
        self._hits = self._misses = self._evictions = 0
        self._lock = threading.Lock()

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._items

    def get(self, key: Hashable) -> Any | None:
        """The value of ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self._misses += 1
                return None
            self._items.move_to_end(key)
            self._hits += 1
            return item[0]

    def put(self, key: Hashable, value: Any, size: int | None = None) -> None:
        """Keep ``value`` under ``key`` (``size`` bytes, default :func:`size_of`), evicting
        the least recently used entries until the budget holds."""
        nbytes = size_of(value) if size is None else size
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            if nbytes > self.budget:
                return
            self._items[key] = (value, nbytes)
            self._bytes += nbytes
            while self._bytes > self.budget:
                _, (_, evicted) = self._items.popitem(last=False)
                self._bytes -= evicted
                self._evictions += 1
            self._peak = max(self._peak, self._bytes)

    def get_or_make(
        self, key: Hashable, make: Callable[[], T], size: Callable[[T], int] | None = None
    ) -> T:
        """The cached value of ``key``, or ``make()``'s, kept (``size`` measures it)."""
        found = self.get(key)
        if found is not None:
            return found  # type: ignore[no-any-return]  # what make() returned for this key
        value = make()
        self.put(key, value, None if size is None else size(value))
        return value

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                entries=len(self._items),
                bytes=self._bytes,
                budget=self.budget,
                peak_bytes=self._peak,
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
            )
