"""Repair's decisions: which ids a node walks, how far a pass has got, and how fast it may copy.

A node repairs itself. It serves some arcs of the ring (`ClusterMap.arcs`); a block's ring
position is the first 8 bytes of its id, so each arc is one range of ids. A pass asks the
metadata for the referenced blocks of each range in id order, a page at a time, and fetches the
ones its store lacks from the other nodes. Ids are random, so the share of a node's id ranges a
pass has walked is the share of its blocks it has checked: progress without counting first.

Pure: the shell (`node/repairer.py`) does the queries, the fetches and the clock.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from ringfs.node.cluster.ring import RING_SIZE, block_ids_at, block_point

#: Referenced blocks asked of the metadata per query.
PAGE = 1024
MiB = 1024 * 1024


@dataclass(frozen=True)
class RepairConfig:
    #: Seconds between passes when nothing is missing.
    interval: float = 300.0
    #: Seconds before the next pass when the last one left copies missing, or failed.
    retry: float = 10.0
    #: Bytes per second repair may copy.
    rate: float = 32 * MiB
    #: Copies fetched at once.
    transfers: int = 4
    #: Seconds a block no chunk map references stays before it is abandoned (an upload is
    #: committed within 30 s, see `MountConfig.commit_within`).
    orphan_age: float = 600.0


def successor(block_id: bytes) -> bytes | None:
    """The next id after `block_id` in id order; None after the largest."""
    value = int.from_bytes(block_id, "big") + 1
    if value >> (8 * len(block_id)):
        return None
    return value.to_bytes(len(block_id), "big")


@dataclass
class PassCursor:
    """Where one pass is in a node's arcs: the id ranges left to walk, and the point reached."""

    arcs: Sequence[tuple[int, int]]
    index: int = 0
    #: The first id not yet walked in `arcs[index]`.
    next_id: bytes | None = None

    def __post_init__(self) -> None:
        self.next_id = block_ids_at(*self.arcs[0])[0] if self.arcs else None

    @property
    def done(self) -> bool:
        return self.index >= len(self.arcs)

    def page(self) -> tuple[bytes, bytes]:
        """The id range to ask for next: from the cursor to the end of its arc."""
        assert self.next_id is not None
        assert not self.done
        return self.next_id, block_ids_at(*self.arcs[self.index])[1]

    def advance(self, listed: Sequence[bytes], limit: int) -> None:
        """Move past a page the metadata listed for `page()` (at most `limit` ids)."""
        after = successor(listed[-1]) if len(listed) >= limit else None
        if after is None or after > self.page()[1]:
            self.index += 1
            self.next_id = None if self.done else block_ids_at(*self.arcs[self.index])[0]
        else:
            self.next_id = after

    def progress(self) -> float:
        """The share of the arcs' ring positions walked, from 0 to 1."""
        total = sum(last - first + 1 for first, last in self.arcs)
        if total == 0 or self.done:
            return 1.0
        walked = sum(last - first + 1 for first, last in self.arcs[: self.index])
        assert self.next_id is not None
        walked += block_point(self.next_id) - self.arcs[self.index][0]
        return min(walked / total, 1.0)


def within(arcs: Sequence[tuple[int, int]], point: int) -> bool:
    """Whether a ring position is in one of the (sorted, disjoint) arcs."""
    index = bisect.bisect_right(arcs, (point, RING_SIZE)) - 1
    return index >= 0 and arcs[index][0] <= point <= arcs[index][1]


def unreferenced(
    held: Sequence[bytes], first: bytes, last: bytes, listed: Sequence[bytes]
) -> list[bytes]:
    """The ids from `first` to `last` of the sorted `held` that are not in `listed`: the
    copies no chunk map references, when `listed` is every referenced id of that range."""
    referenced = set(listed)
    start, stop = bisect.bisect_left(held, first), bisect.bisect_right(held, last)
    return [block_id for block_id in held[start:stop] if block_id not in referenced]


def ring_share(arcs: Sequence[tuple[int, int]]) -> float:
    """The share of the ring the arcs cover."""
    return sum(last - first + 1 for first, last in arcs) / RING_SIZE


@dataclass
class TokenBucket:
    """At most `rate` bytes per second on average, in bursts of at most `burst` bytes.

    A transfer takes its bytes at once and waits out the debt it leaves, so a transfer of
    any size gets through, and the bytes never run ahead of the rate by more than `burst`.
    """

    rate: float
    burst: float
    tokens: float = 0.0
    stamp: float | None = None

    def take(self, size: int, now: float) -> float:
        """Take `size` bytes; returns the seconds to wait before sending them."""
        if self.stamp is None:
            self.tokens = self.burst
        else:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= size
        return max(0.0, -self.tokens / self.rate)


@dataclass
class PassRecord:
    """What one pass found and did."""

    number: int
    started: float  # wall-clock seconds
    finished: float | None = None
    checked: int = 0  # referenced blocks compared with the store
    missing: int = 0  # of those, not in the store
    repaired: int = 0  # copies fetched and stored
    repaired_bytes: int = 0
    failed: int = 0  # missing copies no node could give
    misplaced: int = 0  # copies held here outside this node's arcs (handoffs)
    released: int = 0  # of those, deleted once every placement node had verified it
    handed: int = 0  # copies given to placement nodes that lacked them (before releasing)
    unreferenced: int = 0  # copies held here that no chunk map references
    abandoned: int = 0  # of those, older than the orphan age: put on the garbage list
    complete: bool = False  # walked every arc (not cut short)

    @property
    def left(self) -> int:
        """Missing copies not (yet) repaired."""
        return self.missing - self.repaired

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RepairLedger:
    """A node's repair counters since it started: cheap to read, nothing walks a store."""

    passes: int = 0
    current: PassRecord | None = None
    last: PassRecord | None = None
    #: The number of the last pass that ended with every referenced block in the store.
    clean: int = 0
    repaired: int = 0
    repaired_bytes: int = 0
    handed: int = 0
    handed_bytes: int = 0
    #: The pass a `repair.start` asked for: the next one to start.
    wanted: int = 0

    def begin(self, now: float) -> PassRecord:
        self.passes += 1
        self.current = PassRecord(self.passes, now)
        return self.current

    def end(self, now: float, complete: bool) -> None:
        """The current pass is over: it walked every arc, or was cut short."""
        record = self.current
        assert record is not None
        record.finished = now
        record.complete = complete
        if complete and record.left == 0:
            self.clean = record.number
        self.last, self.current = record, None

    def ask(self) -> int:
        """A pass is wanted that starts from now: return its number."""
        self.wanted = self.passes + 1
        return self.wanted

    def note_handed(self, size: int) -> None:
        assert self.current is not None
        self.current.handed += 1
        self.handed += 1
        self.handed_bytes += size

    def note_repaired(self, size: int) -> None:
        assert self.current is not None
        self.current.repaired += 1
        self.current.repaired_bytes += size
        self.repaired += 1
        self.repaired_bytes += size
