"""The change feed: which inodes and entries each applied command touched, for mounts' caches.

Mounts cache attributes and names. To keep those caches coherent, each member of the meta group
remembers, for the last `FEED_RECORDS` log entries it applied, what each one changed, and the
leader hands that out in order (`meta.changes`). A mount that asks from an index the feed no
longer holds (it fell behind, or the leader restarted or installed a snapshot since) is told to
reset: to forget everything it cached.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from ringfs.node.errors import NodeError

#: Records a member keeps: a mount more than this many commands behind starts over.
FEED_RECORDS = 50_000
#: Most records one answer carries (about 1 MiB at most of names).
FEED_PAGE = 4096


@dataclass(frozen=True, slots=True)
class Change:
    """What one log entry changed: attributes of `inodes`, and the entries (parent, name)."""

    index: int
    #: The client whose command it was (None for the system's own, such as Init), and the
    #: command's number in that client's session: the client knows its own changes by them.
    client_id: bytes | None
    seq: int | None
    inodes: tuple[int, ...]
    entries: tuple[tuple[int, bytes], ...]

    def to_wire(self) -> list[Any]:
        inodes, entries = list(self.inodes), [list(e) for e in self.entries]
        return [self.index, self.client_id, self.seq, inodes, entries]

    @classmethod
    def from_wire(cls, obj: Any) -> Change:
        """Raises NodeError("EINVAL") for anything but a well-formed record."""
        try:
            index, client_id, seq, inodes, entries = obj
            change = cls(
                index,
                client_id,
                seq,
                tuple(inodes),
                tuple((parent, name) for parent, name in entries),
            )
        except (TypeError, ValueError):
            raise NodeError("EINVAL", "malformed change record") from None
        if not (
            _is_int(index)
            and (client_id is None or isinstance(client_id, bytes))
            and (seq is None or _is_int(seq))
            and all(_is_int(ino) for ino in change.inodes)
            and all(_is_int(p) and isinstance(n, bytes) for p, n in change.entries)
        ):
            raise NodeError("EINVAL", "malformed change record")
        return change


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Changes:
    """An answer of the feed: every change after the asked index up to `upto`, in order."""

    upto: int
    #: The feed no longer holds every change after the asked index: drop everything cached.
    reset: bool
    records: tuple[Change, ...]
    #: Directories the asking client holds and must give back (`ringfs.node.meta.delegations`).
    recalls: tuple[int, ...] = ()
    #: The term of the leader that answered: the watches it registered are the ones it keeps
    #: (`ringfs.node.meta.watches`).
    term: int = 0

    def to_wire(self) -> list[Any]:
        records = [r.to_wire() for r in self.records]
        return [self.upto, self.reset, records, list(self.recalls), self.term]

    @classmethod
    def from_wire(cls, obj: Any) -> Changes:
        try:
            upto, reset, records, recalls, term = obj
        except (TypeError, ValueError):
            raise NodeError("EINVAL", "malformed changes") from None
        if not _is_int(upto) or not isinstance(reset, bool) or not isinstance(records, list):
            raise NodeError("EINVAL", "malformed changes")
        if not isinstance(recalls, list) or not all(_is_int(ino) for ino in recalls):
            raise NodeError("EINVAL", "malformed recalls")
        if not _is_int(term):
            raise NodeError("EINVAL", "malformed term")
        found = tuple(Change.from_wire(r) for r in records)
        return cls(upto, reset, found, tuple(recalls), term)


class ChangeFeed:
    """The last `limit` changes a member applied, and a way to wait for the next one."""

    def __init__(self, applied: int, limit: int = FEED_RECORDS) -> None:
        self._records: deque[Change] = deque()
        self._limit = limit
        # Every change after `_known_from` is held: those before were dropped, or never seen.
        self._known_from = applied
        self._applied = applied
        self._arrived = trio.Event()
        # Nudges and restarts so far: each wakes every waiting poll, changes or not.
        self._wakes = 0

    @property
    def applied(self) -> int:
        return self._applied

    def add(self, changes: list[Change], applied: int) -> None:
        """Record what a batch applied up to log index `applied` changed."""
        for change in changes:
            if len(self._records) == self._limit:
                self._known_from = self._records.popleft().index
            self._records.append(change)
        self._applied = applied
        self._arrived.set()
        self._arrived = trio.Event()

    def nudge(self) -> None:
        """Wake the polls waiting now without a change (a recall is for one of them)."""
        self._wakes += 1
        self._arrived.set()
        self._arrived = trio.Event()

    def restart(self, applied: int) -> None:
        """The state was replaced (a snapshot installed): nothing before `applied` is known."""
        self._records.clear()
        self._known_from = self._applied = applied
        self._wakes += 1
        self._arrived.set()
        self._arrived = trio.Event()

    async def wait_after(self, index: int, mine: bytes | None = None) -> None:
        """Return once there is news after `index` (at once if there is), or the feed was
        nudged or restarted."""
        seen, wakes = index, self._wakes
        while not self.news_after(seen, mine):
            seen = max(seen, self._applied)
            await self._arrived.wait()
            if self._wakes != wakes:
                return

    def news_after(self, index: int, mine: bytes | None = None) -> bool:
        """Whether something after `index` was applied. Client `mine`'s own changes are no
        news to it (a mount knows them from its answers: waking its poll for each would
        double its calls), unless there are others or it must reset."""
        if mine is None or index < self._known_from:
            return self._applied > index
        for record in reversed(self._records):
            if record.index <= index:
                return False
            if record.client_id != mine:
                return True
        return False

    def since(self, index: int, limit: int = FEED_PAGE) -> Changes:
        """The changes after `index`; `reset` if some of them are no longer held."""
        if index < self._known_from or index > self._applied:
            return Changes(self._applied, True, ())
        found = []
        for record in reversed(self._records):  # a mount asks from near the end
            if record.index <= index:
                break
            found.append(record)
        found = found[::-1][:limit]
        upto = self._applied if len(found) < limit else found[-1].index
        return Changes(upto, False, tuple(found))
