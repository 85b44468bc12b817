"""The garbage collector: deletes blocks no file references any more, so full disks get room.

Every meta-group member runs one; it works only while its member leads. Each round it lists
the garbage ids (`Garbage` query), takes up to one batch of those listed for at least the grace
period (`blocks/gc.py` decides), sends `block.delete` for each to every node of the cluster map
(a copy may be on any node: the placement, or a handoff), and then drops from the metadata
(`ForgetGarbage`) the ids every node confirmed. An id some node did not confirm stays listed and
is deleted again in a later round: deletes are idempotent.

Each round also ends what the metadata keeps for mounts that have not polled the change feed
for `mount_expiry` seconds (`Expire`): their sessions, reserved inode numbers, held directories
and orphans (files unlinked while open). A mount gives these back at unmount; one that died
never will. One that was only cut off finds its session ended, and opens another.

Why this loses nothing: an id enters the garbage list only when no chunk map references it,
and the metadata refuses to commit a listed id again, so a deleted block is one no file can
reach. The grace period covers readers holding an older chunk map. Blocks no chunk map ever
referenced (uploads never committed, copies that landed after their block was collected) are
listed when the nodes' repair passes abandon them (`node/repairer.py`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import trio

from ringfs.node.blocks.gc import BATCH, LIST_LIMIT, GarbageClock, deleted_everywhere, interval
from ringfs.node.cluster.map import MapView, NodeInfo
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.meta.commands import Clients, Expire, ForgetGarbage, Garbage, decode_result
from ringfs.node.meta.replica import ReplicatedMeta
from ringfs.node.rpc.client import NodePool

log = logging.getLogger(__name__)

#: Nodes sent deletes at once; each gets one delete at a time.
NODES_IN_FLIGHT = 16
#: Clients expired with one command.
EXPIRE_BATCH = 256


class Collector:
    """The garbage collector of one meta-group member."""

    def __init__(
        self,
        meta: ReplicatedMeta,
        pool: NodePool,
        view: MapView,
        grace: float,
        mount_expiry: float = 600.0,
    ) -> None:
        self.meta = meta
        self.pool = pool
        self.view = view
        self.clock = GarbageClock(grace)
        self.mount_expiry = mount_expiry
        self._failing: set[str] = set()
        self._leading_since: float | None = None
        self.expired = 0  # mounts gone whose leftovers this node ended, since it started

    async def run(self) -> None:
        """Collect until cancelled.

        Cancellation may cut a round short; ids it did not forget stay listed for the next
        collector.
        """
        pause = interval(self.clock.grace)
        more = False
        while True:
            await trio.sleep(0 if more else pause)
            more = False
            if not self._leads():
                self.clock.reset()
                self._leading_since = None
                continue
            if self._leading_since is None:
                self._leading_since = trio.current_time()
            try:
                await self._expire_mounts_gone(self._leading_since)
                more = await self._round()
            except NodeError as exc:  # lost the lead, or the metadata refused
                log.info("garbage collection round cut short: %s", exc)

    def _leads(self) -> bool:
        return self.meta.raft.raft.role == "leader"

    async def _round(self) -> bool:
        """Delete and forget one batch of due ids; True if a whole batch went (more may wait).

        Raises NodeError when the metadata refuses the query or the command.
        """
        query = Garbage(LIST_LIMIT)
        listed = decode_result(query, await self.meta.query(query))
        now = trio.current_time()
        self.clock.observe(listed, now)
        due = self.clock.due(now)
        if not due:
            return False
        # A node marked out or removed is not waited for: if it comes back, its repair pass
        # finds the copies no file references and has them collected again.
        nodes = self.view.current.holders()
        confirmed = await self._delete(due, nodes)
        done = deleted_everywhere(due, confirmed, [node.node_id for node in nodes])
        if done:
            outcome, *_ = await self.meta.apply(ForgetGarbage(tuple(done)), None, None, None)
            if outcome.error is not None:
                raise NodeError(outcome.error, "forgetting collected garbage")
            self.clock.forgotten(done)
            log.debug("collected %d garbage blocks", len(done))
        return len(done) == BATCH

    async def _expire_mounts_gone(self, since: float) -> None:
        """End what the metadata keeps for each client that has not polled the change feed
        for `mount_expiry` seconds (counted from `since`, when this leader started): it died,
        or was cut off that long."""
        recalls, expiry = self.meta.recalls, self.mount_expiry
        after = b""
        while True:
            query = Clients(after, LIST_LIMIT)
            clients: list[bytes] = decode_result(query, await self.meta.query(query))
            gone = tuple(c for c in clients if recalls.silent(c, since) >= expiry)
            for first in range(0, len(gone), EXPIRE_BATCH):
                batch = gone[first : first + EXPIRE_BATCH]
                outcome, *_ = await self.meta.apply(Expire(batch), None, None, None)
                if outcome.error is not None:
                    raise NodeError(outcome.error, "expiring the mounts gone")
                for client in batch:
                    recalls.forget(client)
                self.expired += len(batch)
                log.info("ended the sessions of %d mounts silent for %ds", len(batch), expiry)
            if len(clients) < LIST_LIMIT:
                return
            after = clients[-1]

    async def _delete(
        self, block_ids: Sequence[bytes], nodes: Sequence[NodeInfo]
    ) -> dict[str, set[bytes]]:
        """Delete the blocks from every node; returns, per node id, the ids it confirmed."""
        confirmed: dict[str, set[bytes]] = {node.node_id: set() for node in nodes}
        limiter = trio.CapacityLimiter(NODES_IN_FLIGHT)

        async def sweep(node: NodeInfo) -> None:
            async with limiter:
                for block_id in block_ids:
                    try:
                        await self.pool.call(node.address, "block.delete", [block_id])
                    except (Unavailable, NodeError) as exc:
                        self._note(node.node_id, exc)
                        return
                    confirmed[node.node_id].add(block_id)
                self._note(node.node_id, None)

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(sweep, node, name=f"gc-delete {node.node_id}")
        return confirmed

    def _note(self, node: str, failure: Exception | None) -> None:
        """Log a node that stops or starts confirming deletes, once per change."""
        if failure is not None and node not in self._failing:
            self._failing.add(node)
            log.warning(
                "garbage collection: node %s failed (%s); its blocks stay listed until it answers",
                node,
                failure,
            )
        elif failure is None and node in self._failing:
            self._failing.discard(node)
            log.info("garbage collection: node %s answers again", node)

    def stats(self) -> dict[str, Any]:
        """Cheap counters for `node.stats`: nothing here walks a store or the metadata."""
        return {
            "active": self._leads(),
            "waiting": len(self.clock.first_seen),
            "collected": self.clock.collected,
            "failing": sorted(self._failing),
            "expired": self.expired,
        }
