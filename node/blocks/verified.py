"""Which blocks this node verified whole a moment ago, so that a read of a few bytes of one
need not read and check all 4 MiB again.

A block's bytes never change once stored (a new version is a new block), so what a whole
read verified stays true until the disk itself decays or the copy is removed. The store
forgets a block when it deletes or quarantines it; otherwise the memory lasts `MAX_AGE`
seconds, after which a read verifies the whole block again. Corruption that appears within
that minute is found by the next whole read, or by the scrubber.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

#: Seconds a whole verification stands for reads of part of the block.
MAX_AGE = 60.0
#: Blocks remembered at most (the least recently verified are forgotten first).
MAX_BLOCKS = 4096


class RecentlyVerified:
    """Block ids with the time each was last verified whole; safe to use from several
    threads (the store's calls run in worker threads)."""

    def __init__(self, max_age: float = MAX_AGE, max_blocks: int = MAX_BLOCKS) -> None:
        self.max_age = max_age
        self.max_blocks = max_blocks
        self._when: OrderedDict[bytes, float] = OrderedDict()
        self._lock = threading.Lock()

    def verified(self, block_id: bytes, now: float) -> None:
        with self._lock:
            self._when[block_id] = now
            self._when.move_to_end(block_id)
            while len(self._when) > self.max_blocks:
                self._when.popitem(last=False)

    def holds(self, block_id: bytes, now: float) -> bool:
        """Whether the block was verified whole within `max_age` seconds before `now`."""
        with self._lock:
            when = self._when.get(block_id)
            return when is not None and now - when < self.max_age

    def forget(self, block_id: bytes) -> None:
        with self._lock:
            self._when.pop(block_id, None)
