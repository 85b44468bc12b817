"""Raft messages between meta-group members, over the nodes' own msgpack-RPC connections."""

from __future__ import annotations

import logging

import trio

from ringfs.node.client import NodePool
from ringfs.node.clustermap import ClusterMap
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.raft import Message, message_to_wire

log = logging.getLogger(__name__)

# A Raft message not delivered within this is lost; Raft resends what matters.
SEND_TIME_LIMIT = 5.0
# Messages on their way to one member at once; more are dropped (a silent member would
# otherwise collect a growing queue of heartbeats to flush at once when it comes back).
MAX_IN_FLIGHT = 16


class RpcTransport:
    """`Transport` for `RaftNode`: each message is one `raft.message` call, sent in the
    background (the Raft loop never waits for the network)."""

    def __init__(self, cmap: ClusterMap, pool: NodePool, nursery: trio.Nursery) -> None:
        self._cmap = cmap
        self._pool = pool
        self._nursery = nursery
        self._in_flight: dict[str, int] = {}

    def send(self, message: Message, snapshot: bytes | None = None) -> None:
        address = self._cmap.node(message.dst).address
        if self._in_flight.get(address, 0) >= MAX_IN_FLIGHT:
            log.debug("raft message to %s dropped: %d in flight", address, MAX_IN_FLIGHT)
            return
        self._in_flight[address] = self._in_flight.get(address, 0) + 1
        wire = message_to_wire(message)
        self._nursery.start_soon(self._send, address, wire, snapshot, name="raft-send")

    async def _send(self, address: str, wire: list[object], snapshot: bytes | None) -> None:
        try:
            with trio.move_on_after(SEND_TIME_LIMIT):
                await self._pool.call(address, "raft.message", [wire, snapshot], SEND_TIME_LIMIT)
        except (Unavailable, NodeError) as exc:
            log.debug("raft message to %s lost: %s", address, exc)
        finally:
            self._in_flight[address] -= 1
