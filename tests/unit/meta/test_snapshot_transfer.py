"""A metadata snapshot larger than a memory bound goes from one replica to another, and installs.

The image is a file: the leader's transport reads one part at a time from it, the receiver
writes each part to a file of its own, and the other replica installs that file. Python's
allocations during the whole transfer and install stay far below the image's size.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import trio
import trio.testing

from ringfs.node.cluster.map import ClusterMap, MapView, parse_members
from ringfs.node.meta.commands import ROOT_INO, Entry, Init, SetXattr
from ringfs.node.meta.replica import MetaMachine
from ringfs.node.raft.core import Entry as LogEntry
from ringfs.node.raft.core import EntryKind, SnapshotMeta, SnapshotRequest, message_from_wire
from ringfs.node.raft.images import ImageReceiver
from ringfs.node.raft.transport import RpcTransport

MEMBERS = parse_members("n1=127.0.0.1:7001,n2=127.0.0.1:7002")
MiB = 1024 * 1024
IMAGE_AT_LEAST = 40 * MiB
MEMORY_BOUND = 8 * MiB  # what the transfer and the install may allocate at most


def command(index: int, entry: Entry) -> LogEntry:
    return LogEntry(1, index, EntryKind.COMMAND, msgpack.packb(entry.to_wire(), use_bin_type=True))


def large_machine(path: Path) -> MetaMachine:
    """A replica whose database holds some 45 MiB of extended attributes."""
    path.parent.mkdir()
    machine = MetaMachine(path)
    machine.apply([command(1, Entry(Init(4096, 0, 0, 1)))])
    index = 2
    for batch in range(14):
        entries = []
        for n in range(50):
            value = bytes([batch, n]) * 32768  # 64 KiB, different in each
            name = b"user.x%04d" % (batch * 50 + n)
            entries.append(command(index, Entry(SetXattr(ROOT_INO, name, value, 0, 1))))
            index += 1
        machine.apply(entries)
    return machine


class Wire:
    """The member pool between two nodes: parts go to the receiver, the request takes them."""

    def __init__(self, receiver: ImageReceiver) -> None:
        self.receiver = receiver
        self.received: list[tuple[SnapshotRequest, Path | None]] = []
        self.done = trio.Event()

    async def call(self, address: str, method: str, params: list[Any], time_limit: float) -> None:
        assert method == "raft.snapshot_part"
        await self.receiver.add_part(*params)

    async def notify(
        self, address: str, method: str, batch: list[list[Any]], time_limit: float
    ) -> None:
        for (wire,) in batch:
            request = message_from_wire(wire)
            assert isinstance(request, SnapshotRequest)
            self.received.append((request, self.receiver.take(request)))
            self.done.set()


async def test_an_image_larger_than_the_memory_bound_transfers_and_installs(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    leader = large_machine(tmp_path / "n1" / "meta.db")
    index, image = leader.snapshot()
    assert image.stat().st_size > IMAGE_AT_LEAST
    (tmp_path / "n2").mkdir()
    follower = MetaMachine(tmp_path / "n2" / "meta.db")
    wire = Wire(ImageReceiver(tmp_path / "n2" / "incoming"))
    transport = RpcTransport(MapView(ClusterMap(1, MEMBERS)), wire, nursery)  # type: ignore[arg-type]
    meta = SnapshotMeta(index, 1, ("n1", "n2"))
    tracemalloc.start()
    try:
        transport.send(SnapshotRequest("n1", "n2", 1, meta), image)
        with trio.fail_after(60):
            await wire.done.wait()
        ((request, received),) = wire.received
        assert received is not None
        await trio.to_thread.run_sync(follower.restore, request.meta, received)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"{peak} bytes allocated for an image of {image.stat().st_size}"
    assert follower.applied_index() == index
    assert follower.state.dump() == leader.state.dump()
