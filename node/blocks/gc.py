"""Which garbage blocks may be deleted now: the grace period, the batches, the bookkeeping.

The metadata lists the ids of blocks no chunk map references any more (its `garbage` table:
deleted and truncated files, replaced chunks). Such an id is never referenced again, but a
reader that opened a file before another mount replaced its contents may still be reading the
old blocks. So an id is deleted only once it has been listed for `grace` seconds.

The time an id was first seen listed is kept here, in memory, not in the metadata: a collector
that starts (a new leader) starts every clock again, which is safe, only later. Pure: the
caller passes the clock and does the deleting (`node/collector.py`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

#: Garbage ids asked of the metadata per round (16 bytes each on the wire).
LIST_LIMIT = 4096
#: Ids deleted, then forgotten with one metadata command, per round.
BATCH = 256


def interval(grace: float) -> float:
    """Seconds between rounds: often enough that an id waits little past its grace period,
    seldom enough that an idle cluster hardly notices."""
    return min(max(grace / 2, 0.2), 10.0)


@dataclass
class GarbageClock:
    """The ids listed as garbage, each with the time it was first seen listed."""

    grace: float
    first_seen: dict[bytes, float] = field(default_factory=dict)
    collected: int = 0  # ids deleted everywhere and forgotten, since this collector started

    def observe(self, listed: Sequence[bytes], now: float) -> None:
        """Take the latest listing (oldest first): new ids start their clock at `now`.

        Ids no longer listed are dropped: forgotten by another collector, or referenced again.
        """
        self.first_seen = {block_id: self.first_seen.get(block_id, now) for block_id in listed}

    def due(self, now: float) -> list[bytes]:
        """Up to one batch of ids listed for at least the grace period, oldest first."""
        ready = [b for b, seen in self.first_seen.items() if now - seen >= self.grace]
        return ready[:BATCH]

    def forgotten(self, block_ids: Collection[bytes]) -> None:
        """These ids were deleted everywhere and dropped from the metadata."""
        for block_id in block_ids:
            self.first_seen.pop(block_id, None)
        self.collected += len(block_ids)

    def reset(self) -> None:
        """No longer the leader: another collector may act, so every clock starts again."""
        self.first_seen.clear()


def deleted_everywhere(
    block_ids: Sequence[bytes], confirmed: Mapping[str, Collection[bytes]], nodes: Sequence[str]
) -> list[bytes]:
    """The ids every node confirmed it no longer holds: only those may be forgotten, because
    nothing would ever delete a copy left on a node that did not answer."""
    return [b for b in block_ids if all(b in confirmed.get(node, ()) for node in nodes)]
