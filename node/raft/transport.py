"""Raft messages between meta-group members, over the nodes' own msgpack-RPC connections.

Raft needs no answer to a message (the replies are messages of their own), so each one goes
as a `raft.message` notification: one-way, no response frame, no task waiting for one. Each
member has an outbox drained by one sender task, so messages to a member keep their order
and whatever queued while the previous write was on its way leaves in one write.

A snapshot image can outgrow any one message, so it travels ahead of its `SnapshotRequest`
as `raft.snapshot_part` notifications, in order on the same connection; the receiving
`SnapshotAssembler` joins them and hands the image over with the request.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import trio

from ringfs.node.cluster.map import ClusterMap
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.raft.core import Message, SnapshotRequest, message_to_wire
from ringfs.node.rpc.client import NodePool

log = logging.getLogger(__name__)

# A write of Raft messages not done within this is abandoned; Raft resends what matters.
SEND_TIME_LIMIT = 5.0
# Messages waiting for one member; more are dropped (a silent member would otherwise collect
# a growing queue of heartbeats to flush at once when it comes back).
MAX_QUEUED = 64
# A snapshot image travels in parts of this size (one message may carry at most 16 MiB).
SNAPSHOT_PART = 1024 * 1024
# The largest snapshot image a member accepts, so a peer cannot make it hold any amount.
MAX_SNAPSHOT_BYTES = 1024**3


class RpcTransport:
    """`Transport` for `RaftNode`: never blocks the Raft loop, never raises for the network."""

    def __init__(self, cmap: ClusterMap, pool: NodePool, nursery: trio.Nursery) -> None:
        self._cmap = cmap
        self._pool = pool
        self._nursery = nursery
        self._outboxes: dict[str, _Outbox] = {}

    def send(self, message: Message, snapshot: bytes | None = None) -> None:
        try:
            address = self._cmap.node(message.dst).address
        except KeyError:
            log.warning("raft message to %r dropped: not in the cluster map", message.dst[:64])
            return
        outbox = self._outboxes.get(address)
        if outbox is None:
            outbox = self._outboxes[address] = _Outbox(address, self._pool)
            self._nursery.start_soon(outbox.run, name=f"raft-send {address}")
        if isinstance(message, SnapshotRequest) and snapshot is not None:
            outbox.put_snapshot(message, snapshot)
        else:
            outbox.put(message)


class _Outbox:
    """The messages on their way to one member, and the task that writes them."""

    def __init__(self, address: str, pool: NodePool) -> None:
        self._address = address
        self._pool = pool
        self._queue: deque[list[Any]] = deque()
        # At most one image waits or travels; another offered meanwhile is dropped.
        self._snapshot: tuple[SnapshotRequest, bytes] | None = None
        self._sending_snapshot = False
        self._ready = trio.Event()

    def put(self, message: Message) -> None:
        if len(self._queue) >= MAX_QUEUED:
            log.debug("raft message to %s dropped: %d queued", self._address, MAX_QUEUED)
            return
        self._queue.append([message_to_wire(message)])
        self._ready.set()

    def put_snapshot(self, request: SnapshotRequest, image: bytes) -> None:
        if self._sending_snapshot:
            # The image on its way makes this one pointless; if it fails, Raft offers again.
            log.debug("snapshot for %s dropped: one is on its way", self._address)
            return
        self._snapshot = (request, image)
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            await self._send_queued()
            if self._snapshot is not None:
                request, image = self._snapshot
                self._snapshot = None
                self._sending_snapshot = True
                try:
                    await self._send_snapshot(request, image)
                finally:
                    self._sending_snapshot = False

    async def _send_queued(self) -> bool:
        batch = list(self._queue)
        self._queue.clear()
        return not batch or await self._send("raft.message", batch)

    async def _send_snapshot(self, request: SnapshotRequest, image: bytes) -> None:
        """The parts in order, then the request; messages queued meanwhile go in between, so
        a long transfer does not hold back heartbeats. A failed part ends the transfer: the
        leader offers a new snapshot later."""
        header = [request.src, request.term, request.meta.last_index, len(image)]
        whole = memoryview(image)  # parts are views: no copy before the write's own
        for offset in range(0, max(len(image), 1), SNAPSHOT_PART):
            part = whole[offset : offset + SNAPSHOT_PART]
            if not await self._send("raft.snapshot_part", [[*header, offset, part]]):
                return
            if not await self._send_queued():
                return
        await self._send("raft.message", [[message_to_wire(request)]])

    async def _send(self, method: str, batch: list[list[Any]]) -> bool:
        try:
            await self._pool.notify(self._address, method, batch, SEND_TIME_LIMIT)
        except Unavailable as exc:
            log.debug("%d %s to %s lost: %s", len(batch), method, self._address, exc)
            return False
        return True


@dataclass
class _Incoming:
    src: str
    term: int
    last_index: int
    size: int
    image: bytearray


class SnapshotAssembler:
    """The receiving side: joins the parts of one snapshot image at a time, in order. A new
    image (offset 0) replaces an unfinished one, whoever sent it, so at most one image's
    worth of memory is ever held."""

    def __init__(self, max_bytes: int = MAX_SNAPSHOT_BYTES) -> None:
        self._max_bytes = max_bytes
        self._incoming: _Incoming | None = None

    def add_part(
        self, src: str, term: int, last_index: int, size: int, offset: int, data: bytes
    ) -> None:
        """Add the part at `offset` of `src`'s image of (term, last index), `size` bytes in
        all. Raises NodeError, dropping the unfinished image, for a part that does not
        continue it (one was lost) or an image over the limit."""
        if size > self._max_bytes:
            self._incoming = None
            raise NodeError("EFBIG", f"snapshot image of {size} bytes, over {self._max_bytes}")
        if offset == 0:
            self._incoming = _Incoming(src, term, last_index, size, bytearray())
        incoming = self._incoming
        if (
            incoming is None
            or (incoming.src, incoming.term, incoming.last_index, incoming.size)
            != (src, term, last_index, size)
            or len(incoming.image) != offset
            or offset + len(data) > size
        ):
            self._incoming = None
            raise NodeError("EINVAL", f"snapshot part at offset {offset} out of sequence")
        incoming.image += data

    def take(self, request: SnapshotRequest) -> bytes | None:
        """The whole image for `request`, or None if it did not all arrive."""
        incoming = self._incoming
        if incoming is None or incoming.src != request.src:
            return None
        self._incoming = None
        if (incoming.term, incoming.last_index) != (request.term, request.meta.last_index):
            return None
        if len(incoming.image) != incoming.size:
            return None
        return bytes(incoming.image)
