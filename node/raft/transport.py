"""Raft messages between meta-group members, over the nodes' own msgpack-RPC connections.

Raft needs no answer to a message (the replies are messages of their own), so each one goes
as a `raft.message` notification: one-way, no response frame, no task waiting for one. Each
member has an outbox drained by one sender task, so messages to a member keep their order
and whatever queued while the previous write was on its way leaves in one write.

A snapshot image is a file that can outgrow any one message, or the memory of either node, so
it travels ahead of its `SnapshotRequest` as `raft.snapshot_part` requests, one at a time,
each part read from the file only when its turn comes; the receiving `ImageReceiver`
(`images.py`) writes them into a file and hands it over with the request.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from pathlib import Path
from typing import Any

import trio

from ringfs.node.cluster.map import MapView
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.raft import images
from ringfs.node.raft.core import Message, SnapshotRequest, message_to_wire
from ringfs.node.rpc.client import NodePool

log = logging.getLogger(__name__)

# A write of Raft messages not done within this is abandoned; Raft resends what matters.
SEND_TIME_LIMIT = 5.0
# Messages waiting for one member; more are dropped (a silent member would otherwise collect
# a growing queue of heartbeats to flush at once when it comes back).
MAX_QUEUED = 64


class RpcTransport:
    """`Transport` for `RaftNode`: never blocks the Raft loop, never raises for the network."""

    def __init__(self, view: MapView, pool: NodePool, nursery: trio.Nursery) -> None:
        self._view = view
        self._pool = pool
        self._nursery = nursery
        self._outboxes: dict[str, _Outbox] = {}

    def send(self, message: Message, snapshot: Path | None = None) -> None:
        try:
            address = self._view.current.node(message.dst).address
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
        self._snapshot: tuple[SnapshotRequest, Path] | None = None
        self._sending_snapshot = False
        self._ready = trio.Event()
        self._waiting = False  # the task waits for messages: it is writing none

    def put(self, message: Message) -> None:
        """Send `message` at once if nothing waits or travels before it (see
        `RpcConnection.notify_now`), else queue it for the task."""
        if len(self._queue) >= MAX_QUEUED:
            log.debug("raft message to %s dropped: %d queued", self._address, MAX_QUEUED)
            return
        wire = [message_to_wire(message)]
        waiting_for_nothing = self._waiting and not self._queue
        if waiting_for_nothing and self._pool.notify_now(self._address, "raft.message", [wire]):
            return
        self._queue.append(wire)
        self._ready.set()

    def put_snapshot(self, request: SnapshotRequest, image: Path) -> None:
        if self._sending_snapshot:
            # The image on its way makes this one pointless; if it fails, Raft offers again.
            log.debug("snapshot for %s dropped: one is on its way", self._address)
            return
        self._snapshot = (request, image)
        self._ready.set()

    async def run(self) -> None:
        while True:
            self._waiting = True
            await self._ready.wait()
            self._waiting = False
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

    async def _send_snapshot(self, request: SnapshotRequest, image: Path) -> None:
        """The parts in order, each one answered before the next is read, then the request;
        messages queued meanwhile go in between, so a long transfer does not hold back
        heartbeats. A failed part ends the transfer: the leader offers the snapshot again."""
        try:
            fd = await trio.to_thread.run_sync(os.open, image, os.O_RDONLY)
        except OSError as exc:  # a newer snapshot replaced it: that one is offered next
            log.debug("snapshot image %s for %s gone: %s", image, self._address, exc)
            return
        try:
            size = os.fstat(fd).st_size
            header = [request.src, request.term, request.meta.last_index, size]
            for offset in range(0, max(size, 1), images.SNAPSHOT_PART):
                part = await trio.to_thread.run_sync(images.read_part, fd, offset)
                if not await self._send_part([*header, offset, part]):
                    return
                if not await self._send_queued():
                    return
        finally:
            os.close(fd)
        await self._send("raft.message", [[message_to_wire(request)]])

    async def _send_part(self, params: list[Any]) -> bool:
        try:
            await self._pool.call(self._address, "raft.snapshot_part", params, SEND_TIME_LIMIT)
        except (Unavailable, NodeError) as exc:
            log.debug("snapshot part at %d to %s lost: %s", params[4], self._address, exc)
            return False
        return True

    async def _send(self, method: str, batch: list[list[Any]]) -> bool:
        try:
            await self._pool.notify(self._address, method, batch, SEND_TIME_LIMIT)
        except Unavailable as exc:
            log.debug("%d %s to %s lost: %s", len(batch), method, self._address, exc)
            return False
        return True
