"""A map bounded by what its values cost (bytes, mostly), least recently used out first.

What a mount keeps to save a round trip (blocks, chunk maps) must not grow with what it reads:
each kept value is charged its cost, and putting one past the capacity drops the values used
longest ago.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class CostBoundedLRU(Generic[K, V]):
    """Values by key, their costs summing to at most `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._kept: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._held = 0

    def __contains__(self, key: K) -> bool:
        """Whether `key` is kept (without counting as a use)."""
        return key in self._kept

    def get(self, key: K) -> V | None:
        """The value kept for `key`, now the most recently used, or None."""
        kept = self._kept.get(key)
        if kept is None:
            return None
        self._kept.move_to_end(key)
        return kept[0]

    def put(self, key: K, value: V, cost: int) -> None:
        """Keep `value` for `key` in place of any before it; a value that costs more than the
        capacity is not kept."""
        self.forget(key)
        if cost > self.capacity:
            return
        self._kept[key] = (value, cost)
        self._held += cost
        while self._held > self.capacity:
            _, (_, dropped) = self._kept.popitem(last=False)
            self._held -= dropped

    def forget(self, key: K) -> None:
        kept = self._kept.pop(key, None)
        if kept is not None:
            self._held -= kept[1]

    @property
    def held(self) -> int:
        """What the kept values cost, together."""
        return self._held
