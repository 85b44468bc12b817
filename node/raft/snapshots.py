"""A member's own snapshots: taken beside the Raft loop, then compacted into the log, then offered.

Copying a large state machine takes seconds, longer than an election timeout, so the copy runs
in a task of its own (the state machine's `snapshot`, in a worker thread) while the loop goes
on ticking, answering and applying. The image is of one moment, at the index applied then;
once it is taken, the loop compacts the core and the Raft log up to that index
(`Snapshots.finish`) and offers the image to the followers that wait for one. An image offered
is offered again, not taken again, while it is the newest and a follower still needs it; then
its file is handed to `discard` (a transfer still reading it keeps its open file).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import trio

from ringfs.node.errors import StorageFailure
from ringfs.node.raft.core import Message, Raft, SnapshotMeta, SnapshotRequest

log = logging.getLogger(__name__)

Io = Callable[..., Awaitable[Any]]

#: With a share (see `Snapshots`), the most bytes of entries, and the most entries as a
#: multiple of the threshold, a member holds before it snapshots: they bound the log in memory.
LOG_BYTES_CAP = 64 * 1024 * 1024
ENTRIES_CAP = 20


class SnapshotStorage(Protocol):
    def compact(self, meta: SnapshotMeta) -> None: ...


class SnapshotSource(Protocol):
    def snapshot(self) -> tuple[int, Path]: ...


class SnapshotSender(Protocol):
    def send(self, message: Message, snapshot: Path | None = None) -> None: ...


class Snapshots:
    """When to snapshot, the snapshot being taken, and the image offered to followers.

    A snapshot copies the whole state. With a `share`, a member waits, after `threshold`
    entries, until the entries since its last snapshot hold at least that share of the last
    image's size (or `LOG_BYTES_CAP` bytes, or `ENTRIES_CAP` times `threshold` entries), so the
    copying costs at most 1/share of what the log takes in, whatever the size of the state
    (LogCabin's snapshot ratio). Without, it snapshots every `threshold` entries.
    """

    def __init__(
        self,
        node_id: str,
        storage: SnapshotStorage,
        machine: SnapshotSource,
        transport: SnapshotSender,
        *,
        threshold: int,
        share: float | None = None,
        io: Io,
        discard: Callable[[Path], None],
    ) -> None:
        """`discard` takes the image files no longer needed, for the loop to delete."""
        self._node_id = node_id
        self._storage, self._machine, self._transport = storage, machine, transport
        self.threshold = threshold
        self.share = share
        # The size of the last image, and the bytes of the entries applied since it.
        self._image_bytes = 0
        self._logged_bytes = 0
        self._io = io
        self._discard = discard
        #: Where the log's snapshot ends (this member's own, or one it installed).
        self.index = 0
        # A new core starts a new generation: a copy begun for an older one is dropped.
        self._generation = 0
        self._running = False
        self._taken: tuple[int, Path] | None = None
        self._failure: StorageFailure | None = None
        self._offered: tuple[SnapshotMeta, Path] | None = None
        self._wanted: set[str] = set()

    def reset(self, index: int) -> None:
        """A new core, whose log's snapshot ends at `index`: forget what the previous did."""
        self.index = index
        self._generation += 1
        self._drop_offered()
        if self._taken is not None:
            self._discard(self._taken[1])
        self._taken, self._failure = None, None
        self._wanted.clear()

    def due(self, applied: int, raft: Raft) -> bool:
        """Enough applied since the last snapshot, and none being taken; but not while a
        snapshot this node received is about to replace the state machine (the core already
        dropped the log for it), nor while the state machine is ahead of the log (a snapshot
        installed, the log not yet compacted to it, when the storage failed)."""
        received = raft.snapshot
        if self._running or (received is not None and received.last_index > applied):
            return False
        entries = applied - self.index
        if applied > raft.last_index or entries < self.threshold:
            return False
        if self.share is None or entries >= ENTRIES_CAP * self.threshold:
            return True
        return self._logged_bytes >= min(self.share * self._image_bytes, LOG_BYTES_CAP)

    def logged(self, count: int) -> None:
        """Entries holding `count` bytes were applied."""
        self._logged_bytes += count

    def start(self, nursery: trio.Nursery, wake: Callable[[], None]) -> None:
        """Take a snapshot beside the loop, unless one is being taken; `wake` is called once
        it is taken (or failed), for the loop to `finish` it."""
        if not self._running:
            self._running = True
            nursery.start_soon(self._take, wake, name=f"raft-snapshot {self._node_id}")

    async def _take(self, wake: Callable[[], None]) -> None:
        generation = self._generation
        try:
            index, image = await self._io(self._machine.snapshot)
            size = await self._io(_size_of, image)
        except StorageFailure as exc:
            if generation == self._generation:
                self._failure = exc
        else:
            if generation != self._generation:
                self._discard(image)
            else:
                self._image_bytes = size
                if self._taken is not None:  # not compacted to yet, and older than this one
                    self._discard(self._taken[1])
                self._taken = (index, image)
        finally:
            self._running = False
            wake()

    async def finish(self, raft: Raft) -> None:
        """In the loop: compact the core and the storage up to the snapshot just taken, and
        send it to the followers waiting for one. Raises StorageFailure if taking it failed.

        One at the index the log's snapshot already ends at only gives an image to offer. One
        at an index the log no longer holds is dropped: a snapshot this member installed
        meanwhile is newer, or (after a crash in the middle of installing one) the state
        machine is ahead of the log, which catches up before the next one.
        """
        failure, self._failure = self._failure, None
        if failure is not None:
            raise failure
        if self._taken is None:
            return
        index, image = self._taken
        self._taken = None
        if index < self.index:
            self._discard(image)
            return
        try:
            meta = raft.snapshot_meta(index)
        except ValueError:
            log.warning("node %s: no snapshot at %d until the log holds it", self._node_id, index)
            self.index = index
            self._discard(image)
            return
        if index > self.index:
            raft.compact(meta)
            await self._io(self._storage.compact, meta)
            self.index = index
            self._logged_bytes = 0
            log.info("node %s: snapshot at index %d, log compacted", self._node_id, index)
        self._drop_offered()
        self._offered = (meta, image)
        for follower in sorted(self._wanted):
            self._send(raft, follower)
        self._wanted.clear()

    def installed(self, index: int, image_bytes: int) -> None:
        """The state machine now is a snapshot received at `index`, of `image_bytes`."""
        self.index = index
        self._image_bytes, self._logged_bytes = image_bytes, 0
        self._drop_offered()

    def offer(self, raft: Raft, follower: str) -> bool:
        """Send `follower` the newest snapshot; False if none is at hand yet (the caller
        starts one, and it goes out once taken). The core offers again every few ticks
        while an answer is due, and a large image may take longer than that to arrive."""
        offered = self._offered
        if offered is None or offered[0].last_index != self.index or not offered[1].exists():
            self._wanted.add(follower)
            return False
        self._send(raft, follower)
        return True

    def _send(self, raft: Raft, follower: str) -> None:
        if raft.role != "leader" or self._offered is None:
            return
        meta, image = self._offered
        log.info("node %s: sending the snapshot at %d to %s", self._node_id, meta.last_index,
                 follower)  # fmt: skip
        request = SnapshotRequest(self._node_id, follower, raft.term, meta)
        self._transport.send(request, image)

    def forget(self, leading: bool, match_index: dict[str, int]) -> None:
        """Drop the offered image once no follower can need it, or this node does not lead
        (a snapshot taken to compact the log is dropped this way as soon as it is taken)."""
        if not leading:
            self._wanted.clear()
        if self._offered is None:
            return
        needed = self._offered[0].last_index
        if not leading or all(m >= needed for m in match_index.values()):
            self._drop_offered()

    def _drop_offered(self) -> None:
        if self._offered is not None:
            self._discard(self._offered[1])
            self._offered = None


def _size_of(path: Path) -> int:
    """The size of an image just taken (0 if it cannot be read: the next one is sooner)."""
    try:
        return os.path.getsize(path)
    except OSError:
        return 0
