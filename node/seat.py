"""This node's seat in the meta group: its metadata replica runs while the group needs it.

The replica (with its garbage collector) starts when the cluster map names this node in the
meta group, or, at the node's start, when its data directory holds a Raft log (it was a
member, and the group may still count on it). It stops once the map no longer names it and
its own log no longer counts it a voter: the group has removed it (`ringfs.node.meta.
membership`), so it leaves nobody short of a vote. A draining node leaves the cluster only
after that (`ringfs.node.lifecycle`). The entry that removed it may never reach it (the leader
stops sending once the change is committed): one the map no longer names that has heard no
leader for `SILENCE` seconds stops as well. That is safe even if the group still counted it:
the group's leader removes every member the map does not name, up or not.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio

from ringfs.node.cluster.map import MapView
from ringfs.node.collector import Collector
from ringfs.node.meta.replica import ReplicatedMeta
from ringfs.node.raft import storage

log = logging.getLogger(__name__)

#: Seconds between two looks at the map.
CHECK_INTERVAL = 0.5
#: Seconds without a leader after which a member the map no longer names stops.
SILENCE = 10.0


class MetaSeat:
    """Starts and stops this node's replica of the metadata (see the module)."""

    def __init__(
        self,
        node_id: str,
        data_dir: Path,
        view: MapView,
        replica: Callable[[], ReplicatedMeta],
        collector: Callable[[ReplicatedMeta], Collector],
    ) -> None:
        self.node_id = node_id
        self.view = view
        self._make_replica, self._make_collector = replica, collector
        self._was_member = storage.exists(data_dir)
        #: The running replica and its collector (None while this node holds no seat).
        self.replica: ReplicatedMeta | None = None
        self.collector: Collector | None = None
        self._scope = trio.CancelScope()
        self._closed = trio.Event()
        self._leader_seen = 0.0  # when the replica last knew of a leader

    def leads(self) -> bool:
        """Whether this node leads the meta group."""
        return self.replica is not None and self.replica.raft.raft.role == "leader"

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Until cancelled; started once the replica runs, if this node holds a seat."""
        async with trio.open_nursery() as nursery:
            if self._wanted() or self._was_member:
                await nursery.start(self._serve)
            task_status.started()
            while True:
                await trio.sleep(CHECK_INTERVAL)
                if self.replica is None and self._wanted():
                    await nursery.start(self._serve)
                elif self.replica is not None and not self._needed(self.replica):
                    log.info("node %s left the meta group", self.node_id)
                    self.replica = self.collector = None
                    self._scope.cancel()
                    await self._closed.wait()  # its files are closed: a later seat opens them

    def _wanted(self) -> bool:
        return self.node_id in self.view.current.meta_ids()

    def _needed(self, replica: ReplicatedMeta) -> bool:
        core, now = replica.raft.raft, trio.current_time()
        if core.leader is not None:
            self._leader_seen = now
        if self._wanted():
            return True
        return self.node_id in core.voters and now - self._leader_seen < SILENCE

    async def _serve(self, *, task_status: trio.TaskStatus[None]) -> None:
        replica = self._make_replica()
        collector = self._make_collector(replica)
        self._closed = trio.Event()
        try:
            with trio.CancelScope() as self._scope:
                async with trio.open_nursery() as nursery:
                    await nursery.start(replica.run)
                    nursery.start_soon(collector.run, name="gc")
                    self.replica, self.collector = replica, collector
                    self._leader_seen = trio.current_time()
                    log.info(
                        "node %s holds a seat in the meta group (wanted: %s)",
                        self.node_id,
                        ", ".join(self.view.current.meta_ids()),
                    )
                    task_status.started()
        finally:
            self._closed.set()
