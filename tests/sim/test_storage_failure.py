"""A member whose storage fails (a full disk) stops taking part, and rejoins once it works.

Three `RaftNode`s on the in-memory network under a mock clock. While one member's storage
raises `StorageFailure`, nothing escapes its loop: it logs an ERROR, answers nothing, and the
other two keep a leader and keep committing. Once the storage works again it reopens it,
after a back-off, and catches up.
"""

from __future__ import annotations

import itertools
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.testing

from ringfs.node.raft.core import LEADER, NotLeader
from ringfs.node.raft.shell import RETRY_FIRST, LeadershipLost, RaftNode
from tests.sim.durable import Disk, KVMachine, MemoryStorage
from tests.sim.invariants import Monitor
from tests.sim.network import Faults, SimNetwork

IDS = ("n1", "n2", "n3")
TICK = 0.05


@dataclass
class Group:
    nodes: dict[str, RaftNode]
    disks: dict[str, Disk]
    monitor: Monitor

    def leader(self) -> RaftNode | None:
        return next((n for n in self.nodes.values() if n.raft.role == LEADER), None)

    async def command(self, number: int) -> None:
        """Apply one write through whichever node leads, retrying across elections (each try
        is a command of its own: the monitor checks that none commits twice)."""
        for attempt in itertools.count():
            leader = self.leader()
            if leader is not None:
                op = number * 1000 + attempt
                data = b'{"id": %d, "op": "write", "key": "k", "args": [%d]}' % (op, number)
                try:
                    await leader.apply(data)
                    return
                except (NotLeader, LeadershipLost):
                    pass
            await trio.sleep(TICK)


@pytest.fixture
async def group(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> AsyncIterator[Group]:
    network = SimNetwork(random.Random(1), IDS, Faults(delay=(0.001, 0.01)), tmp_path)
    await nursery.start(network.run)
    monitor = Monitor(trio.current_time)
    disks = {node_id: Disk(MemoryStorage()) for node_id in IDS}
    files = iter(tmp_path / f"image-{n}" for n in range(10**6))
    nodes = {}
    for number, node_id in enumerate(IDS):
        machine = KVMachine(node_id, disks[node_id], monitor, False, files.__next__)
        nodes[node_id] = node = RaftNode(
            node_id, IDS, disks[node_id].storage, machine, network.transport(node_id),
            rng=random.Random(number), tick_interval=TICK, snapshot_threshold=10,
            blocking_io=False,
        )  # fmt: skip
        await nursery.start(node.run)
        network.attach(node_id, node.deliver)
    yield Group(nodes, disks, monitor)
    nursery.cancel_scope.cancel()


async def test_a_full_disk_stops_the_member_not_the_node_and_it_rejoins(
    group: Group,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    expected_logs: list[str],
) -> None:
    expected_logs.append("storage failed")
    for number in range(5):
        await group.command(number)
    failing = next(n for n in group.nodes if group.nodes[n] is not group.leader())
    group.disks[failing].storage.failing = True
    for number in range(5, 40):  # enough for snapshots, so it comes back by one
        await group.command(number)
    stopped = group.nodes[failing].status()
    assert (stopped["role"], stopped["failure"]) == (
        "stopped",
        "raft log: database or disk is full",
    )
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors
    assert f"node {failing}: storage failed" in errors[0].getMessage()
    await trio.sleep(10 * RETRY_FIRST)  # still failing: it keeps trying, less and less often
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) < 10
    group.disks[failing].storage.failing = False
    await group.command(40)
    leader = group.leader()
    assert leader is not None
    with trio.fail_after(60):
        while True:
            if group.nodes[failing].status()["applied_index"] >= leader.status()["commit_index"]:
                break
            await trio.sleep(TICK)
    assert group.nodes[failing].status()["failure"] is None
    assert group.monitor.violations == []


async def test_a_leader_whose_disk_fills_hands_over(
    group: Group, autojump_clock: trio.testing.MockClock, expected_logs: list[str]
) -> None:
    expected_logs.append("storage failed")
    await group.command(0)
    leader = group.leader()
    assert leader is not None
    group.disks[leader.node_id].storage.failing = True
    await group.command(1)  # through another leader
    assert leader.raft.role != LEADER  # its core stepped down: nothing takes it for a leader
    assert leader.status()["role"] == "stopped"
    group.disks[leader.node_id].storage.failing = False
    with trio.fail_after(60):
        while True:
            if leader.status()["failure"] is None and leader.raft.role != LEADER:
                break
            await trio.sleep(TICK)
    await group.command(2)
    assert group.monitor.violations == []
