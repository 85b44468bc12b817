"""Storage faults for the simulation: disks that fail for a while, and nodes that come back
with nothing or with an older copy of their disk.

A restart with lost storage happens only within the fault model Raft's rules cover
(docs/raft.md, "Members that lose their storage"): one node at a time, while no other member has
an empty log or is still recovering and no stale leader is alive. An older copy also needs a
leader that brings it up to date: it comes back only under a leader that has led for `STABLE`
seconds on a calm network, and the other faults of the schedule wait (`hold`), on a calm
network, until it holds everything that leader had committed once it knew the node restarted.
"""

from __future__ import annotations

from typing import Protocol

import trio

from ringfs.node.raft.core import LEADER
from ringfs.node.raft.shell import RaftNode
from tests.sim.durable import Disk, MemoryStorage
from tests.sim.invariants import Monitor
from tests.sim.network import CALM, SimNetwork
from tests.sim.schedule import Config, FaultEvent

__all__ = ["StorageFaults"]

COPY_EVERY = 0.25  # seconds between the copies of each disk a rewound node may restart with
# After a rewound node restarts, long enough on a calm network for the leader to learn it did.
LEARN_RESTART = 0.5
# How long a leader leads before a rewound node comes back to it: longer than check-quorum's
# window, so a leader that was about to step down has done so.
STABLE = 1.0
# A rewound node that has not caught up by then: the run fails.
CATCH_UP_LIMIT = 30.0


class Group(Protocol):
    """What the faults act on: the simulated group (`tests.sim.cluster`)."""

    config: Config
    monitor: Monitor
    network: SimNetwork
    disks: dict[str, Disk]
    live: dict[str, RaftNode]
    healed_at: float

    def resolve(self, node: str | None) -> str | None: ...

    def leader(self) -> str | None: ...

    def crash(self, node_id: str) -> None: ...

    async def start(self, node_id: str) -> None: ...

    async def restart(self, node_id: str) -> None: ...


class StorageFaults:
    """The storage faults of one run, on `group`."""

    def __init__(self, group: Group) -> None:
        self._group = group
        # (time, copy) of every disk, every COPY_EVERY seconds: what a rewind restores.
        self.copies: dict[str, list[tuple[float, Disk]]] = {n: [] for n in group.config.nodes}
        #: Set while the fault schedule waits for a rewound node to catch up.
        self.hold: trio.Event | None = None
        # The node losing its storage (crashed, not yet back with its new disk or caught up).
        self._losing: set[str] = set()

    async def fail(self, event: FaultEvent) -> None:
        """The node's storage raises StorageFailure for a while (a full disk)."""
        target = self._group.resolve(event.node)
        if target is None:
            self._group.monitor.note("full disk on the leader: there is none")
            return
        storage = self._group.disks[target].storage
        storage.failing = True
        self._group.monitor.note(f"the disk of {target} fails")
        await trio.sleep(event.length)
        storage.failing = False
        self._group.monitor.note(f"the disk of {target} works again")

    async def record_disks(self) -> None:
        """Copy every disk every COPY_EVERY seconds (a consistent moment: nothing runs
        between the storage's writes and the state machine's in one step)."""
        while True:
            for node_id, disk in self._group.disks.items():
                self.copies[node_id].append((trio.current_time(), disk.copy()))
            await trio.sleep(COPY_EVERY)

    async def lose(self, event: FaultEvent) -> None:
        """Crash the event's node, then restart it with nothing or an older copy of its disk
        once the fault model allows it (one node at a time; if it never does before healing,
        healing restarts the node with its own disk)."""
        while (node_id := self._group.resolve(event.node)) is None or self._losing:
            if self._group.healed_at:
                return
            await trio.sleep(0.05)
        self._losing.add(node_id)
        self._group.crash(node_id)
        try:
            await trio.sleep(event.length)
            if event.action == "rewind":
                await self._rewind(node_id, event.age)
            elif await self._until_allowed(node_id, event.action):
                self._group.disks[node_id] = Disk(MemoryStorage())
                self._group.monitor.note(f"restart {node_id} with nothing")
                await self._group.start(node_id)
        finally:
            self._losing.discard(node_id)

    async def _rewind(self, node_id: str, age: float) -> None:
        """Restart with the disk as it was `age` seconds ago, once a leader has led on a calm
        network for a while; hold the other faults until the node has caught up."""
        network = self._group.network
        self.hold, faults, network.faults = trio.Event(), network.faults, CALM
        try:
            if await self._until_allowed(node_id, "rewind"):
                taken, copy = self._copy_before(node_id, trio.current_time() - age)
                self._group.disks[node_id] = copy.copy()
                self._group.monitor.note(f"restart {node_id} with its storage as of t={taken:.3f}")
                await self._group.start(node_id)
                await self._until_caught_up(node_id)
        finally:
            if not self._group.healed_at:
                network.faults = faults
            self.hold.set()
            self.hold = None

    async def _until_allowed(self, node_id: str, action: str) -> bool:
        """Keep `node_id` down until the fault model lets it come back without its storage;
        False if healing came first (then it comes back whole). A rewind also waits for a
        leader that has led for `STABLE` seconds, so that it goes on leading on the calm
        network."""
        leader, since = None, 0.0
        while True:
            if self._group.healed_at:
                self._group.monitor.note(f"{action} {node_id}: not done before healing")
                await self._group.restart(node_id)
                return False
            self._group.crash(node_id)  # another fault's restart may have brought it back
            if self._group.leader() != leader:
                leader, since = self._group.leader(), trio.current_time()
            blocked = self._blocked(node_id, action)
            if action == "rewind" and trio.current_time() - since < STABLE:
                blocked = blocked or "the leader is new"
            if blocked is None:
                return True
            await trio.sleep(0.05)

    def _copy_before(self, node_id: str, then: float) -> tuple[float, Disk]:
        """The last copy of the disk taken at `then` or before (else the first one)."""
        copies = self.copies[node_id]
        return next((c for c in reversed(copies) if c[0] <= then), copies[0])

    def _blocked(self, node_id: str, action: str) -> str | None:
        """Why `node_id` (down) may not come back without its storage now; None if it may."""
        group = self._group
        leaders = [n for n, node in group.live.items() if node.raft.role == LEADER]
        top = max(disk.storage.hard_state.term for disk in group.disks.values())
        if len(leaders) > 1 or any(group.live[n].raft.term < top for n in leaders):
            return "a stale leader is alive"
        for other, disk in group.disks.items():
            if other != node_id and (disk.empty or disk.storage.hard_state.recovering):
                return f"{other} has an empty log or is recovering"
        if action == "rewind":
            up = len(group.live) + (node_id not in group.live)
            if not leaders or group.network.partitioned or up <= len(group.config.nodes) // 2:
                return "no leader with a majority up, or the network is partitioned"
            if any(disk.storage.failing for disk in group.disks.values()):
                return "a disk fails"  # the leader must go on leading
        return None

    async def _until_caught_up(self, node_id: str) -> None:
        """Hold the faults until the rewound node holds everything the leader committed once
        it knew the node restarted. A leader lost meanwhile breaks the fault model: noted as
        a failure."""
        leader = self._group.leader()
        assert leader not in (None, node_id)
        target = None
        start = trio.current_time()
        while target is None or self._group.live[node_id].raft.commit_index < target:
            await trio.sleep(0.05)
            if trio.current_time() > start + CATCH_UP_LIMIT:
                self._group.monitor.violation(f"{node_id} did not catch up with {leader} in time")
                return
            if self._group.leader() != leader or node_id not in self._group.live:
                self._group.monitor.violation(
                    f"fault model: {leader} stopped leading before {node_id} caught up"
                )
                return
            raft = self._group.live[leader].raft
            in_term = raft.snapshot_meta(raft.commit_index).last_term == raft.term
            if target is None and in_term and trio.current_time() >= start + LEARN_RESTART:
                target = raft.commit_index
        self._group.monitor.note(f"{node_id} caught up with {leader} to {target}")
