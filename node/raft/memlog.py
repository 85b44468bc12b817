"""The Raft core's in-memory log: the entries after the snapshot, and the lookups it needs.

Terms never decrease along a Raft log, so the first and last entry of a term are binary searches
away. The configuration in force is the latest CONFIG entry in the log, committed or not (thesis
§4.1), else the snapshot's, else the initial one; it is recomputed whenever the log changes.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

from ringfs.node.raft.messages import Entry, EntryKind, NodeId, SnapshotMeta, decode_voters


def _term_of(entry: Entry) -> int:
    return entry.term


class InMemoryLog:
    """Entries `first_index`..`last_index`; everything before is in `snapshot`.

    Raises ValueError if `entries` do not follow the snapshot contiguously (entries the snapshot
    covers are skipped).
    """

    def __init__(
        self, initial: tuple[NodeId, ...], snapshot: SnapshotMeta | None, entries: Sequence[Entry]
    ) -> None:
        self._initial = initial
        self.snapshot = snapshot
        self._entries = [e for e in entries if e.index > self.base]
        if any(e.index != self.base + i for i, e in enumerate(self._entries, start=1)):
            raise ValueError("entries do not follow the snapshot contiguously")
        self.voters: tuple[NodeId, ...] = ()
        self.config_index = 0
        self._refresh_config()

    @property
    def base(self) -> int:
        """The index the snapshot ends at (0 without one)."""
        return self.snapshot.last_index if self.snapshot else 0

    @property
    def base_term(self) -> int:
        return self.snapshot.last_term if self.snapshot else 0

    @property
    def last_index(self) -> int:
        return self.base + len(self._entries)

    @property
    def last_term(self) -> int:
        return self._entries[-1].term if self._entries else self.base_term

    def term_at(self, index: int) -> int | None:
        """The term of the entry at `index`; None if compacted away or beyond the log."""
        if index == self.base:
            return self.base_term
        if self.base < index <= self.last_index:
            return self._entries[index - self.base - 1].term
        return 0 if index == 0 else None

    def slice(self, start: int, end: int) -> tuple[Entry, ...]:
        """The entries with `start` <= index < `end` (all still in memory)."""
        assert start > self.base, "compacted entries are gone"
        return tuple(self._entries[start - self.base - 1 : end - self.base - 1])

    def is_up_to_date(self, last_index: int, last_term: int) -> bool:
        """§5.4.1: a log ending at (last_index, last_term) is at least as up-to-date as this."""
        return (last_term, last_index) >= (self.last_term, self.last_index)

    def first_index_of_term(self, term: int) -> int:
        """Where `term` starts, not looking before `first_index`."""
        return self.base + 1 + bisect.bisect_left(self._entries, term, key=_term_of)

    def last_index_of_term(self, term: int) -> int | None:
        """The last entry of `term`, or None if the log has none (as far as it remembers)."""
        end = bisect.bisect_right(self._entries, term, key=_term_of)
        if end:
            return self._entries[end - 1].index if self._entries[end - 1].term == term else None
        return self.base if self.base and self.base_term == term else None

    def config_at(self, index: int) -> tuple[NodeId, ...]:
        """The configuration in force once the entry at `index` is in the log."""
        for entry in reversed(self._entries[: max(0, index - self.base)]):
            if entry.kind is EntryKind.CONFIG:
                return decode_voters(entry.data)
        return self.snapshot.voters if self.snapshot else self._initial

    def append(self, entries: Sequence[Entry]) -> None:
        self._entries.extend(entries)
        if any(e.kind is EntryKind.CONFIG for e in entries):
            self._refresh_config()

    def truncate(self, index: int) -> None:
        """Drop the entries from `index` on; a configuration they held stops applying."""
        del self._entries[index - self.base - 1 :]
        if self.config_index >= index:
            self._refresh_config()

    def compact(self, meta: SnapshotMeta) -> None:
        """Drop the entries up to `meta.last_index`, which the snapshot `meta` now covers."""
        del self._entries[: meta.last_index - self.base]
        self.snapshot = meta
        self._refresh_config()

    def reset(self, meta: SnapshotMeta) -> None:
        """Replace the whole log by the snapshot `meta`."""
        self._entries = []
        self.snapshot = meta
        self._refresh_config()

    def _refresh_config(self) -> None:
        self.voters = self.config_at(self.last_index)
        self.config_index = next(
            (e.index for e in reversed(self._entries) if e.kind is EntryKind.CONFIG), self.base
        )
