"""A snapshot that takes longer than an election timeout does not stall the Raft loop.

Three `RaftNode`s on the in-memory network, in real time, with worker threads: the state
machine's copy sleeps well past the election timeout, on every member at once. The leader goes
on ticking, heartbeating and committing meanwhile, so it neither steps down nor keeps callers
waiting.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from ringfs.node.raft.core import LEADER, Entry, SnapshotMeta
from ringfs.node.raft.shell import RaftNode
from tests.sim.durable import MemoryStorage
from tests.sim.network import Faults, SimNetwork

IDS = ("n1", "n2", "n3")
TICK = 0.05  # elections after 0.5 to 0.95 s
COPY_TIME = 2.0  # seconds a snapshot takes: twice the longest election timeout


class SlowMachine:
    """A state machine whose snapshot takes `COPY_TIME` seconds (in its worker thread)."""

    def __init__(self, files: Path) -> None:
        self.files = files
        self.index = 0
        self.copies = 0

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        self.index = entries[-1].index
        return [None] * len(entries)

    def applied_index(self) -> int:
        return self.index

    def snapshot(self) -> tuple[int, Path]:
        index = self.index
        self.copies += 1
        time.sleep(COPY_TIME)
        path = self.files / f"image-{self.copies}"
        path.write_bytes(b"%d" % index)
        return index, path

    def restore(self, meta: SnapshotMeta, image: Path) -> None:
        self.index = meta.last_index
        image.unlink()

    def reopen(self) -> None:
        pass


async def test_a_leader_keeps_leading_while_snapshots_take_longer_than_an_election(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    network = SimNetwork(random.Random(1), IDS, Faults(delay=(0.001, 0.005)), tmp_path)
    await nursery.start(network.run)
    nodes: dict[str, RaftNode] = {}
    machines: dict[str, SlowMachine] = {}
    for number, node_id in enumerate(IDS):
        (tmp_path / node_id).mkdir()
        machines[node_id] = SlowMachine(tmp_path / node_id)
        nodes[node_id] = node = RaftNode(
            node_id, IDS, MemoryStorage(), machines[node_id], network.transport(node_id),
            rng=random.Random(number), tick_interval=TICK, snapshot_threshold=20,
        )  # fmt: skip
        await nursery.start(node.run)
        network.attach(node_id, node.deliver)
    with trio.fail_after(10):
        while True:
            leader = next((n for n in nodes.values() if n.raft.role == LEADER), None)
            if leader is not None:
                break
            await trio.sleep(0.05)
    term = leader.raft.term
    slowest = 0.0
    end = trio.current_time() + 2 * COPY_TIME
    while trio.current_time() < end:
        started = trio.current_time()
        await leader.apply(b"x")
        slowest = max(slowest, trio.current_time() - started)
    assert all(machine.copies for machine in machines.values())  # every member copied
    assert (leader.raft.role, leader.raft.term) == (LEADER, term)
    assert slowest < 0.5, f"a command waited {slowest:.2f}s"
    assert leader.status()["snapshot_index"] >= 20
