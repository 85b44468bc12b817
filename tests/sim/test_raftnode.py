"""The trio shell's own rules, one follower driven by hand under a mock clock.

A follower acknowledges an append as soon as it is persisted, and applies committed entries
later (on the next tick, or once many wait), off the path the leader waits on. An append that
finds the loop idle is written and acknowledged in the task that received it; those right
behind it wait for the loop, which writes them together.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from ringfs.node.errors import StorageFailure
from ringfs.node.raft.core import (
    AppendRequest,
    AppendResponse,
    Entry,
    EntryKind,
    Message,
    SnapshotMeta,
    SnapshotRequest,
    VoteRequest,
    VoteResponse,
)
from ringfs.node.raft.shell import FOLLOWER_APPLY_BATCH, RaftNode
from tests.sim.durable import MemoryStorage

TICK = 0.05


@dataclass
class Recorder:
    """Transport and state machine at once: what was sent, and what was applied."""

    files: Path
    sent: list[Message] = field(default_factory=list)
    images: list[Path | None] = field(default_factory=list)
    applied: list[int] = field(default_factory=list)
    restored: list[int] = field(default_factory=list)
    snapshots_taken: int = 0

    def send(self, message: Message, snapshot: Path | None = None) -> None:
        self.sent.append(message)
        self.images.append(snapshot)

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        self.applied.extend(entry.index for entry in entries)
        return [None] * len(entries)

    def applied_index(self) -> int:
        return max([0, *self.applied, *self.restored])

    def snapshot(self) -> tuple[int, Path]:
        self.snapshots_taken += 1
        return self.applied_index(), self.image(b"image %d" % self.snapshots_taken)

    def restore(self, meta: SnapshotMeta, image: Path) -> None:
        self.restored.append(meta.last_index)
        image.unlink()

    def reopen(self) -> None:
        pass

    def image(self, data: bytes) -> Path:
        path = self.files / f"image-{len(list(self.files.iterdir()))}"
        path.write_bytes(data)
        return path


async def started(nursery: trio.Nursery, node_id: str, files: Path) -> tuple[RaftNode, Recorder]:
    """Member `node_id` of n1, n2, n3, running, with a fresh storage and a `Recorder`."""
    recorder = Recorder(files)
    node = RaftNode(
        node_id,
        ("n1", "n2", "n3"),
        MemoryStorage(),
        recorder,
        recorder,
        rng=random.Random(1),
        tick_interval=TICK,
        blocking_io=False,
    )
    await nursery.start(node.run)
    return node, recorder


@pytest.fixture
async def follower(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock, tmp_path: Path
) -> AsyncIterator[tuple[RaftNode, Recorder]]:
    yield await started(nursery, "n2", tmp_path)
    nursery.cancel_scope.cancel()


def append(prev: int, count: int, commit: int) -> AppendRequest:
    entries = tuple(
        Entry(1, index, EntryKind.COMMAND, b"c%d" % index)
        for index in range(prev + 1, prev + 1 + count)
    )
    return AppendRequest("n1", "n2", 1, prev, 1 if prev else 0, entries, commit, 1)


async def delivered(node: RaftNode, message: Message) -> None:
    node.deliver(message)
    await trio.testing.wait_all_tasks_blocked()


async def test_a_follower_acknowledges_first_and_applies_on_the_next_tick(
    follower: tuple[RaftNode, Recorder], mock_clock: trio.testing.MockClock
) -> None:
    node, recorder = follower
    await delivered(node, append(0, 2, 0))
    await delivered(node, append(2, 1, 2))  # commits the first two
    acks = [m for m in recorder.sent if isinstance(m, AppendResponse)]
    assert [(m.success, m.match_index) for m in acks] == [(True, 2), (True, 3)]
    assert node.raft.commit_index == 2
    assert recorder.applied == []  # acknowledged, not yet applied
    mock_clock.jump(TICK)
    await trio.testing.wait_all_tasks_blocked()
    assert recorder.applied == [1, 2]
    assert node.status()["applied_index"] == 2


async def test_a_follower_applies_at_once_when_many_entries_wait(
    follower: tuple[RaftNode, Recorder],
) -> None:
    node, recorder = follower
    await delivered(node, append(0, FOLLOWER_APPLY_BATCH, 0))
    await delivered(node, append(FOLLOWER_APPLY_BATCH, 1, FOLLOWER_APPLY_BATCH))
    assert recorder.applied == list(range(1, FOLLOWER_APPLY_BATCH + 1))


async def test_a_newer_snapshot_replaces_one_still_waiting(
    follower: tuple[RaftNode, Recorder],
) -> None:
    node, recorder = follower
    older = recorder.image(b"image 10")
    for index, image in ((10, older), (20, recorder.image(b"image 20"))):
        meta = SnapshotMeta(index, 1, ("n1", "n2", "n3"))
        node.deliver(SnapshotRequest("n1", "n2", 1, meta), image)
    await trio.testing.wait_all_tasks_blocked()
    assert recorder.restored == [20]
    assert node.status()["applied_index"] == 20
    assert not older.exists()  # the one replaced is deleted


async def test_a_follower_answers_an_append_in_the_task_that_received_it(
    follower: tuple[RaftNode, Recorder],
) -> None:
    node, recorder = follower
    await trio.testing.wait_all_tasks_blocked()  # the loop has nothing to do
    node.deliver(append(0, 2, 0))
    # No checkpoint since: written and acknowledged without waiting for the loop's turn.
    assert sorted(cast(MemoryStorage, node.storage).log) == [1, 2]
    acks = [m for m in recorder.sent if isinstance(m, AppendResponse)]
    assert [(m.success, m.match_index) for m in acks] == [(True, 2)]


async def test_appends_arriving_together_are_written_once_by_the_loop(
    follower: tuple[RaftNode, Recorder],
) -> None:
    node, recorder = follower
    writes: list[list[int]] = []
    storage = cast(MemoryStorage, node.storage)
    storage.on_save = lambda entries: writes.append([entry.index for entry in entries])
    await trio.testing.wait_all_tasks_blocked()
    for prev in range(4):  # one read's worth of messages, delivered without a checkpoint
        node.deliver(append(prev, 1, 0))
    await trio.testing.wait_all_tasks_blocked()
    assert writes == [[1], [2, 3, 4]]
    acks = [m for m in recorder.sent if isinstance(m, AppendResponse)]
    assert all(m.success for m in acks)
    assert acks[-1].match_index == 4


async def test_a_storage_failure_met_on_receipt_stops_the_member(
    follower: tuple[RaftNode, Recorder], expected_logs: list[str]
) -> None:
    expected_logs.append("storage failed (raft log: database or disk is full)")
    node, recorder = follower
    await trio.testing.wait_all_tasks_blocked()
    cast(MemoryStorage, node.storage).failing = True
    node.deliver(append(0, 1, 0))  # does not raise into the transport
    await trio.testing.wait_all_tasks_blocked()
    assert node.status()["role"] == "stopped"
    assert "disk is full" in node.status()["failure"]
    assert not [m for m in recorder.sent if isinstance(m, AppendResponse)]


async def test_nothing_is_stepped_on_receipt_once_a_storage_failure_waits_for_the_loop(
    follower: tuple[RaftNode, Recorder], expected_logs: list[str]
) -> None:
    expected_logs.append("storage failed (meta.db: disk I/O error)")
    node, recorder = follower
    await trio.testing.wait_all_tasks_blocked()  # the loop has nothing to do
    node.storage_failed(StorageFailure("meta.db: disk I/O error"))
    node.deliver(append(0, 1, 0))  # before the loop had its turn
    assert cast(MemoryStorage, node.storage).log == {}
    await trio.testing.wait_all_tasks_blocked()
    assert node.status()["role"] == "stopped"
    assert not [m for m in recorder.sent if isinstance(m, AppendResponse)]


@pytest.fixture
async def leader(
    nursery: trio.Nursery, mock_clock: trio.testing.MockClock, tmp_path: Path
) -> AsyncIterator[tuple[RaftNode, Recorder]]:
    """n1, elected by the votes of n2 and n3, its first entry committed."""
    node, recorder = await started(nursery, "n1", tmp_path)
    while node.raft.role != "leader":
        mock_clock.jump(TICK)
        await trio.testing.wait_all_tasks_blocked()
        asked, recorder.sent[:] = list(recorder.sent), []
        for m in asked:
            if isinstance(m, VoteRequest):
                node.deliver(VoteResponse(m.dst, m.src, m.term, True, m.pre_vote))
                await trio.testing.wait_all_tasks_blocked()
    await acknowledged(node, recorder)
    yield node, recorder
    nursery.cancel_scope.cancel()


async def acknowledged(node: RaftNode, recorder: Recorder) -> None:
    """n2 acknowledges every AppendRequest sent to it so far."""
    await trio.testing.wait_all_tasks_blocked()
    for m in [m for m in recorder.sent if isinstance(m, AppendRequest) and m.dst == "n2"]:
        match = m.prev_index + len(m.entries)
        node.deliver(AppendResponse("n2", "n1", m.term, True, match, 0, 0, m.probe))
    await trio.testing.wait_all_tasks_blocked()


async def test_a_leader_commits_and_applies_in_the_task_that_received_the_answer(
    leader: tuple[RaftNode, Recorder], nursery: trio.Nursery
) -> None:
    node, recorder = leader
    results: list[Any] = []

    async def propose() -> None:
        results.append(await node.apply(b"command"))

    nursery.start_soon(propose)
    await trio.testing.wait_all_tasks_blocked()
    index = node.raft.last_index
    (request,) = [
        m for m in recorder.sent
        if isinstance(m, AppendRequest) and m.dst == "n2" and m.entries
        and m.entries[-1].index == index
    ]  # fmt: skip
    node.deliver(AppendResponse("n2", "n1", request.term, True, index, 0, 0, request.probe))
    # No checkpoint since: committed and applied without waiting for the loop's turn.
    assert node.raft.commit_index == index
    assert recorder.applied[-1] == index
    await trio.testing.wait_all_tasks_blocked()
    assert results == [None]


async def test_a_proposal_to_an_idle_leader_goes_out_in_the_proposers_task(
    leader: tuple[RaftNode, Recorder], nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    node, recorder = leader
    written_by: list[tuple[str, list[int]]] = []
    cast(MemoryStorage, node.storage).on_save = lambda entries: written_by.append(
        (trio.lowlevel.current_task().name, [entry.index for entry in entries])
    )
    sent_by: list[tuple[str, Message]] = []
    send = recorder.send

    def noted(message: Message, snapshot: Path | None = None) -> None:
        sent_by.append((trio.lowlevel.current_task().name, message))
        send(message, snapshot)

    monkeypatch.setattr(recorder, "send", noted)
    await trio.testing.wait_all_tasks_blocked()  # the loop has nothing to do

    async def propose(data: bytes) -> None:
        await node.apply(data)

    nursery.start_soon(propose, b"alone", name="proposer")
    await trio.testing.wait_all_tasks_blocked()
    index = node.raft.last_index
    assert written_by == [("proposer", [index])]
    carrying = [(task, m.dst) for task, m in sent_by if isinstance(m, AppendRequest) and m.entries]
    assert ("proposer", "n2") in carrying
    # The first of those that come together goes out at once; the others wait for the loop,
    # which proposes them in one entry batch, with one log write.
    written_by.clear()
    for n in range(3):
        nursery.start_soon(propose, b"together %d" % n, name=f"proposer {n}")
    await trio.testing.wait_all_tasks_blocked()
    assert [indices for _, indices in written_by] == [[index + 1], [index + 2, index + 3]]
    assert written_by[0][0].startswith("proposer ")
    assert not written_by[1][0].startswith("proposer")
