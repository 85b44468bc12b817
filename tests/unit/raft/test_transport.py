"""`RpcTransport`'s outboxes, over a fake pool: order, batching, sending at once, and one
snapshot at a time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ringfs.node.cluster.map import ClusterMap, MapView, parse_members
from ringfs.node.raft import images
from ringfs.node.raft.core import (
    Message,
    SnapshotMeta,
    SnapshotRequest,
    VoteRequest,
    message_from_wire,
)
from ringfs.node.raft.transport import RpcTransport

MEMBERS = parse_members("n1=127.0.0.1:7001,n2=127.0.0.1:7002")


class Pool:
    """Records what is notified and called; snapshot parts wait for `release` while `hold`
    is set, notifications while `hold_messages` is. `part_sent` and `snapshot_sent` tell that
    a part, and a SnapshotRequest, went (the transport reads images in worker threads, so
    waiting for blocked tasks is not enough). What `notify_now` took is recorded in `calls`
    as `"now"`, and it takes nothing while `takes_now` is False."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[list[Any]]]] = []
        self.hold = False
        self.release = trio.Event()
        self.hold_messages = False
        self.takes_now = True
        self.part_sent = trio.Event()
        self.snapshot_sent = trio.Event()
        self.notified = trio.Event()

    async def notify(
        self, address: str, method: str, batch: list[list[Any]], time_limit: float
    ) -> None:
        self.calls.append((method, batch))
        self.notified.set()
        if self.hold_messages:
            await self.release.wait()
        if any(isinstance(message_from_wire(wire), SnapshotRequest) for (wire,) in batch):
            self.snapshot_sent.set()

    def notify_now(self, address: str, method: str, batch: list[list[Any]]) -> bool:
        if self.takes_now:
            self.calls.append(("now", batch))
        return self.takes_now

    async def call(self, address: str, method: str, params: list[Any], time_limit: float) -> None:
        self.calls.append((method, [params]))
        self.part_sent.set()
        if method == "raft.snapshot_part" and self.hold:
            await self.release.wait()


def request(index: int) -> SnapshotRequest:
    return SnapshotRequest("n1", "n2", 2, SnapshotMeta(index, 1, ("n1", "n2")))


def vote(term: int) -> VoteRequest:
    return VoteRequest("n1", "n2", term, 0, 0, False)


async def test_messages_queued_together_leave_in_one_write_in_order(
    nursery: trio.Nursery,
) -> None:
    pool = Pool()
    transport = RpcTransport(MapView(ClusterMap(1, MEMBERS)), pool, nursery)  # type: ignore[arg-type]
    for term in (1, 2, 3):
        transport.send(vote(term))
    await trio.testing.wait_all_tasks_blocked()
    assert [(m, [message_from_wire(p[0]) for p in b]) for m, b in pool.calls] == [
        ("raft.message", [vote(1), vote(2), vote(3)])
    ]


def sent(pool: Pool) -> list[tuple[str, list[Message]]]:
    return [(how, [message_from_wire(p[0]) for p in b]) for how, b in pool.calls]


async def test_a_message_to_a_waiting_outbox_leaves_in_the_senders_task(
    nursery: trio.Nursery,
) -> None:
    pool = Pool()
    transport = RpcTransport(MapView(ClusterMap(1, MEMBERS)), pool, nursery)  # type: ignore[arg-type]
    transport.send(vote(1))  # the outbox's task has not started: the message waits for it
    await trio.testing.wait_all_tasks_blocked()
    transport.send(vote(2))  # now it waits for messages
    assert sent(pool) == [("raft.message", [vote(1)]), ("now", [vote(2)])]  # no checkpoint


@pytest.mark.parametrize(
    ("writing", "takes_now"),
    [(True, True), (False, False)],
    ids=["behind-a-write-under-way", "the-connection-takes-nothing-at-once"],
)
async def test_messages_that_cannot_go_at_once_wait_for_the_task_in_order(
    nursery: trio.Nursery, writing: bool, takes_now: bool
) -> None:
    pool = Pool()
    pool.hold_messages = writing
    pool.takes_now = takes_now
    transport = RpcTransport(MapView(ClusterMap(1, MEMBERS)), pool, nursery)  # type: ignore[arg-type]
    transport.send(vote(1))
    await trio.testing.wait_all_tasks_blocked()  # the task wrote it (and is held there)
    transport.send(vote(2))
    transport.send(vote(3))  # behind the one waiting, even if the connection could take it
    assert sent(pool) == [("raft.message", [vote(1)])]
    pool.takes_now = True
    pool.release.set()
    await trio.testing.wait_all_tasks_blocked()
    assert sent(pool) == [("raft.message", [vote(1)]), ("raft.message", [vote(2), vote(3)])]


def image(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / f"image-{len(data)}"
    path.write_bytes(data)
    return path


async def test_a_snapshot_offered_while_one_travels_is_dropped(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    pool = Pool()
    pool.hold = True
    transport = RpcTransport(MapView(ClusterMap(1, MEMBERS)), pool, nursery)  # type: ignore[arg-type]
    transport.send(request(10), image(tmp_path, b"first image"))
    await pool.part_sent.wait()  # its first part is on its way
    transport.send(request(20), image(tmp_path, b"the second image"))
    transport.send(vote(5))
    pool.release.set()
    await pool.snapshot_sent.wait()
    await trio.testing.wait_all_tasks_blocked()
    parts = [b[0] for m, b in pool.calls if m == "raft.snapshot_part"]
    assert parts == [["n1", 2, 10, len(b"first image"), 0, b"first image"]]
    messages = [message_from_wire(p[0]) for m, b in pool.calls if m == "raft.message" for p in b]
    assert messages == [vote(5), request(10)]  # the vote went between the part and the request


async def test_a_message_for_a_node_outside_the_map_is_dropped(
    nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    expected_logs.append("not in the cluster map")
    pool = Pool()
    transport = RpcTransport(MapView(ClusterMap(1, MEMBERS)), pool, nursery)  # type: ignore[arg-type]
    transport.send(VoteRequest("n1", "n9", 2, 0, 0, False))
    transport.send(vote(3))
    await trio.testing.wait_all_tasks_blocked()
    assert [message_from_wire(p[0]) for _, b in pool.calls for p in b] == [vote(3)]


async def test_an_image_goes_part_by_part_each_read_when_its_turn_comes(
    nursery: trio.Nursery, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(images, "SNAPSHOT_PART", 4)
    pool = Pool()
    pool.hold = True
    transport = RpcTransport(MapView(ClusterMap(1, MEMBERS)), pool, nursery)  # type: ignore[arg-type]
    path = image(tmp_path, b"abcdefghij")
    transport.send(request(10), path)
    await pool.part_sent.wait()
    path.write_bytes(b"ABCDEFGHIJ")  # parts not sent yet are read from the file later
    pool.release.set()
    await pool.snapshot_sent.wait()
    parts = [b[0][4:] for m, b in pool.calls if m == "raft.snapshot_part"]
    assert parts == [[0, b"abcd"], [4, b"EFGH"], [8, b"IJ"]]


async def test_an_image_deleted_before_its_turn_is_not_sent(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    pool = Pool()
    transport = RpcTransport(MapView(ClusterMap(1, MEMBERS)), pool, nursery)  # type: ignore[arg-type]
    path = image(tmp_path, b"gone")
    path.unlink()  # a newer snapshot replaced it: that one is offered next
    transport.send(request(10), path)
    await trio.sleep(0.1)  # the outbox tries to open it, in a worker thread
    transport.send(vote(3))
    await trio.testing.wait_all_tasks_blocked()
    assert sent(pool) == [("now", [vote(3)])]
