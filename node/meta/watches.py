"""Which mounts keep which files' chunk maps, so that they may open them again without asking.

Close-to-open: an open must see every flush that returned before it began, in any mount. A mount
that keeps a file's map (it read it, or its own command changed the file) *watches* the file at
the leader. A change of a watched file by another client is not answered until every watcher
heard of it through its change feed (its next poll asks from past the change) or can no longer
trust what it kept (its lease, `LEASE` from a poll it sent, ran out). While its lease runs
and the leader that registered the watch leads (`term`), a mount opens a file it watches from
what it kept, without a round trip: no flush that returned can be missing from it. A watch
lasts `WATCH_TIME` from the request that registered it, so that the leader forgets those of
files nobody touches again; the mount then asks at the next open, which registers it again.

A new leader knows nobody's watches: until `TRUST_BOUND` passed since it began, by when every
mount's trust in what an earlier leader registered ran out (that leader answered its last poll
before this one was elected), it holds back the answer to any change of a file older than its
own lead. Files made since (inode numbers from `fresh_from` on) no earlier leader registered.
An answer waits only for its own client's changes: others' answers go out meanwhile.

A leader that stops leading keeps its watches for `TRUST_BOUND` more: a command it proposed may
still be applied and answered by it, and must wait as before.

`Watches` is the leader's bookkeeping of this, without I/O: the replica feeds it registrations,
applied changes and polls, and asks how long an answer must still wait (`delay`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

#: Seconds a mount trusts what it cached, its watches too, after it sent the poll whose answer
#: it took (`ringfs.fs.metacache`). An idle feed answers every `FEED_WAIT` (0.25 s), so a
#: lease outlives the next answer.
LEASE = 1.0
#: The leader's bound of that, counted from when the poll reached it: the two clocks may run
#: at slightly different rates.
TRUST_BOUND = LEASE * 1.1
#: Seconds a watch lasts from the request that registered it, as the mount counts them.
WATCH_TIME = 60.0
#: The leader's bound of that.
WATCH_BOUND = WATCH_TIME * 1.1
#: Watches the leader keeps (about 100 bytes each); more are refused (the mount then asks at
#: every open until older ones expire).
WATCH_LIMIT = 500_000
#: Clients whose last poll the leader remembers before it forgets those long silent.
POLLED_LIMIT = 4096


def watchable(inodes: Iterable[int], entries: Iterable[tuple[int, bytes]]) -> tuple[int, ...]:
    """The inodes a change registers its client as watching: all it changed but the directories
    whose names it changed (nobody opens a directory, and a create in a directory two mounts
    share must not wait for the other one)."""
    directories = {parent for parent, _ in entries}
    return tuple(ino for ino in inodes if ino not in directories)


class Watches:
    """The watches registered with one leader in one term, and the answers they hold back."""

    def __init__(
        self, term: int, fresh_from: int, clock: Callable[[], float], limit: int = WATCH_LIMIT
    ) -> None:
        self.term = term
        self._fresh_from = fresh_from
        self._clock = clock
        self._limit = limit
        self._started = clock()
        # Each client's watches: the inodes, with when each was registered, oldest first
        # (those `WATCH_BOUND` old go). A few mounts, many files each.
        self._watched: dict[bytes, dict[int, float]] = {}
        self._count = 0
        # When each client's last poll reached this leader.
        self._polled: dict[bytes, float] = {}
        # Applied changes (by log index, in order): whose, and the watchers still to hear of it.
        self._waits: dict[int, tuple[bytes | None, set[bytes]]] = {}
        # Changes of files older than this lead, made while an earlier leader's watches may
        # still be trusted (by log index, in order), and whose.
        self._early: list[tuple[int, bytes | None]] = []
        # When this leader was first found no longer leading.
        self._ended: float | None = None

    def end_lead(self) -> bool:
        """This leader no longer leads: whether its watches are past use (`TRUST_BOUND` after
        this was first called, every mount's trust in them ran out)."""
        now = self._clock()
        if self._ended is None:
            self._ended = now
        return now >= self._ended + TRUST_BOUND

    def watch(self, client: bytes, inodes: Iterable[int]) -> bool:
        """Register `client` as keeping the maps of `inodes` (again: from now); False if
        there is no room."""
        now = self._clock()
        self._expire(now)
        watched = self._watched.setdefault(client, {})
        for ino in inodes:
            if watched.pop(ino, None) is not None:
                self._count -= 1
            if self._count >= self._limit:
                return False
            watched[ino] = now
            self._count += 1
        return True

    def watching(self, client: bytes, inodes: Iterable[int]) -> bool:
        """Whether `client` watches every one of `inodes` (no other client changed one since
        it was registered)."""
        watched = self._watched.get(client, {})
        return all(ino in watched for ino in inodes)

    def changed(
        self,
        index: int,
        client: bytes | None,
        inodes: Iterable[int],
        registered: Collection[int] = (),
        leading: bool = True,
    ) -> None:
        """Log entry `index`, `client`'s command, changed `inodes`: their other watchers must
        hear of it before its answer goes out, and watch them no more. `client` watches those
        of them `registered` (see `watchable`: the others are directories, which nobody
        watches) from now on, if this leader is still `leading`: it knows what it changed."""
        now = self._clock()
        if now < self._started + TRUST_BOUND and any(ino < self._fresh_from for ino in registered):
            self._early.append((index, client))
        for ino in inodes:
            for watcher, watched in self._watched.items():
                since = watched.pop(ino, None)
                if since is None:
                    continue
                self._count -= 1
                if watcher != client and now < since + WATCH_BOUND:
                    self._waits.setdefault(index, (client, set()))[1].add(watcher)
        if client is not None and leading:
            self.watch(client, registered)

    def polled(self, client: bytes, since: int) -> None:
        """`client` asks the feed for what came after `since`: it heard of everything up to it."""
        now = self._polled[client] = self._clock()
        if len(self._polled) > POLLED_LIMIT:
            for silent in [c for c in self._polled if self._trusted_until(c) <= now]:
                del self._polled[silent]
        for index in list(self._waits):
            if index > since:
                break
            waiting = self._waits[index][1]
            waiting.discard(client)
            if not waiting:
                del self._waits[index]

    def awaits(self, client: bytes) -> bool:
        """Whether an answer waits for `client` to hear of a change."""
        return any(client in waiting for _, waiting in self._waits.values())

    def delay(self, index: int, client: bytes) -> float:
        """Seconds `client`'s answer of log entry `index` must still wait (0: none): for the
        watchers of what its changes up to `index` changed (a retried command's answer comes
        from a later entry than the change), at most until those can no longer trust their
        maps, and for this leader's first `TRUST_BOUND` if they changed older files."""
        now = self._clock()
        wait = 0.0
        if self._early:
            left = self._started + TRUST_BOUND - now
            if left <= 0:
                self._early.clear()
            elif any(entry <= index and owner == client for entry, owner in self._early):
                wait = left
        for entry in list(self._waits):
            if entry > index:
                break
            owner, waiting = self._waits[entry]
            for watcher in list(waiting):
                left = self._trusted_until(watcher) - now
                if left <= 0:
                    waiting.discard(watcher)
                elif owner == client:
                    wait = max(wait, left)
            if not waiting:
                del self._waits[entry]
        return wait

    def _trusted_until(self, client: bytes) -> float:
        """Until when `client` may trust a map this leader registered: `TRUST_BOUND` after its
        last poll reached this leader (or after this leader began)."""
        return max(self._polled.get(client, self._started), self._started) + TRUST_BOUND

    def _expire(self, now: float) -> None:
        """Forget the watches `WATCH_BOUND` old."""
        for client, watched in list(self._watched.items()):
            while watched:
                ino, since = next(iter(watched.items()))
                if now < since + WATCH_BOUND:
                    break
                del watched[ino]
                self._count -= 1
            if not watched:
                del self._watched[client]
