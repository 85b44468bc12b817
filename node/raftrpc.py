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

from ringfs.node.client import NodePool
from ringfs.node.clustermap import ClusterMap
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.raft import Message, SnapshotRequest, message_to_wire

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
        address = self._cmap.node(message.dst).address
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
        # At most one image waits: a newer snapshot makes an older one pointless.
        self._snapshot: tuple[SnapshotRequest, bytes] | None = None
        self._ready = trio.Event()

    def put(self, message: Message) -> None:
        if len(self._queue) >= MAX_QUEUED:
            log.debug("raft message to %s dropped: %d queued", self._address, MAX_QUEUED)
            return
        self._queue.append([message_to_wire(message)])
        self._ready.set()

    def put_snapshot(self, request: SnapshotRequest, image: bytes) -> None:
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
                await self._send_snapshot(request, image)

    async def _send_queued(self) -> bool:
        batch = list(self._queue)
        self._queue.clear()
        return not batch or await self._send("raft.message", batch)

    async def _send_snapshot(self, request: SnapshotRequest, image: bytes) -> None:
        """The parts in order, then the request; messages queued meanwhile go in between, so
        a long transfer does not hold back heartbeats. A failed part ends the transfer: the
        leader offers a new snapshot later."""
        header = [request.src, request.term, request.meta.last_index]
        for offset in range(0, max(len(image), 1), SNAPSHOT_PART):
            part = image[offset : offset + SNAPSHOT_PART]
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
    term: int
    last_index: int
    image: bytearray


class SnapshotAssembler:
    """The receiving side: joins the parts of each sender's snapshot image, in order."""

    def __init__(self, max_bytes: int = MAX_SNAPSHOT_BYTES) -> None:
        self._max_bytes = max_bytes
        self._incoming: dict[str, _Incoming] = {}

    def add_part(self, src: str, term: int, last_index: int, offset: int, data: bytes) -> None:
        """Add the part at `offset` of `src`'s image of (term, last index); offset 0 starts a
        new image. Raises NodeError, dropping what came before, for a part that does not
        continue the image (one was lost) or that would make it too large."""
        if offset == 0:
            self._incoming[src] = _Incoming(term, last_index, bytearray())
        incoming = self._incoming.get(src)
        if incoming is None or (incoming.term, incoming.last_index, len(incoming.image)) != (
            term,
            last_index,
            offset,
        ):
            self._incoming.pop(src, None)
            raise NodeError("EINVAL", f"snapshot part at offset {offset} out of sequence")
        if offset + len(data) > self._max_bytes:
            del self._incoming[src]
            raise NodeError("EFBIG", f"snapshot image over {self._max_bytes} bytes")
        incoming.image += data

    def take(self, request: SnapshotRequest) -> bytes | None:
        """The whole image for `request`, or None if its parts did not all arrive."""
        incoming = self._incoming.pop(request.src, None)
        if incoming is None or (incoming.term, incoming.last_index) != (
            request.term,
            request.meta.last_index,
        ):
            return None
        return bytes(incoming.image)
