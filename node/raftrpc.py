"""Raft messages between meta-group members, over the nodes' own msgpack-RPC connections.

Raft needs no answer to a message (the replies are messages of their own), so each one goes
as a `raft.message` notification: one-way, no response frame, no task waiting for one. Each
member has an outbox drained by one sender task, so messages to a member keep their order
and whatever queued while the previous write was on its way leaves in one write.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

import trio

from ringfs.node.client import NodePool
from ringfs.node.clustermap import ClusterMap
from ringfs.node.errors import Unavailable
from ringfs.node.raft import Message, message_to_wire

log = logging.getLogger(__name__)

# A write of Raft messages not done within this is abandoned; Raft resends what matters.
SEND_TIME_LIMIT = 5.0
# Messages waiting for one member; more are dropped (a silent member would otherwise collect
# a growing queue of heartbeats to flush at once when it comes back).
MAX_QUEUED = 64


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
        outbox.put([message_to_wire(message), snapshot])


class _Outbox:
    """The messages on their way to one member, and the task that writes them."""

    def __init__(self, address: str, pool: NodePool) -> None:
        self._address = address
        self._pool = pool
        self._queue: deque[list[Any]] = deque()
        self._ready = trio.Event()

    def put(self, params: list[Any]) -> None:
        if len(self._queue) >= MAX_QUEUED:
            log.debug("raft message to %s dropped: %d queued", self._address, MAX_QUEUED)
            return
        self._queue.append(params)
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready = trio.Event()
            batch = list(self._queue)
            self._queue.clear()
            try:
                await self._pool.notify(self._address, "raft.message", batch, SEND_TIME_LIMIT)
            except Unavailable as exc:
                log.debug("%d raft messages to %s lost: %s", len(batch), self._address, exc)
