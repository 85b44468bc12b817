"""`Snapshots`: a member's own snapshots, taken beside the loop, compacted, offered once."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ringfs.node.raft.core import Message, Raft, SnapshotMeta, SnapshotRequest
from ringfs.node.raft.snapshots import Snapshots


class Fakes:
    """Storage, state machine and transport at once; the machine's copy waits for `release`."""

    def __init__(self, files: Path) -> None:
        self.files = files
        self.applied = 0
        self.taken = 0
        self.compacted: list[int] = []
        self.sent: list[tuple[Message, Path | None]] = []
        self.release = trio.Event()
        self.copying = False
        self.discarded: list[Path] = []

    def compact(self, meta: SnapshotMeta) -> None:
        self.compacted.append(meta.last_index)

    def snapshot(self) -> tuple[int, Path]:
        self.taken += 1
        path = self.files / f"image-{self.taken}"
        path.write_bytes(b"state at %d" % self.applied)
        return self.applied, path

    def send(self, message: Message, snapshot: Path | None = None) -> None:
        self.sent.append((message, snapshot))

    async def io(self, fn: Any, *args: Any) -> Any:
        if fn == self.snapshot:
            self.copying = True
            await self.release.wait()  # a long copy, while the loop goes on
            self.copying = False
        return fn(*args)


def snapshots_of(fakes: Fakes, threshold: int) -> Snapshots:
    return Snapshots(
        "n1", fakes, fakes, fakes, threshold=threshold, io=fakes.io, discard=fakes.discarded.append
    )


def setup(tmp_path: Path, threshold: int) -> tuple[Fakes, Snapshots, Raft]:
    """The fakes, their `Snapshots`, and a leader that committed a few entries."""
    fakes = Fakes(tmp_path)
    raft = Raft("n1", ("n1",), rng=random.Random(1))
    raft.tick()  # a lone voter leads at its first tick
    for _ in range(3):
        raft.propose(b"x")
    fakes.applied = raft.commit_index
    return fakes, snapshots_of(fakes, threshold), raft


async def copy_while(
    nursery: trio.Nursery, fakes: Fakes, snapshots: Snapshots, meanwhile: Callable[[], None]
) -> None:
    """Take a snapshot, and call `meanwhile` while the copy runs."""
    woken = trio.Event()
    snapshots.start(nursery, woken.set)
    await trio.testing.wait_all_tasks_blocked()
    meanwhile()
    fakes.release.set()
    await woken.wait()


async def test_a_snapshot_is_taken_beside_the_loop_then_compacted_and_sent(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fakes, snapshots, raft = setup(tmp_path, threshold=3)
    woken = trio.Event()
    assert snapshots.due(fakes.applied, raft)
    assert not snapshots.offer(raft, "n2")  # nothing to offer yet: it waits for one
    snapshots.start(nursery, woken.set)
    await trio.testing.wait_all_tasks_blocked()
    assert fakes.copying
    assert not snapshots.due(fakes.applied, raft)  # one at a time
    snapshots.start(nursery, woken.set)
    await snapshots.finish(raft)  # nothing taken yet: the loop goes on
    assert (fakes.compacted, fakes.sent) == ([], [])
    fakes.release.set()
    await woken.wait()
    await snapshots.finish(raft)
    assert fakes.taken == 1
    assert fakes.compacted == [fakes.applied]
    assert raft.snapshot is not None
    assert raft.snapshot.last_index == fakes.applied
    ((request, image),) = fakes.sent
    assert isinstance(request, SnapshotRequest)
    assert (request.dst, request.meta.last_index) == ("n2", fakes.applied)
    assert image == tmp_path / "image-1"


async def test_an_offered_image_is_offered_again_not_taken_again(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fakes, snapshots, raft = setup(tmp_path, threshold=1)
    await copy_while(nursery, fakes, snapshots, lambda: None)
    await snapshots.finish(raft)
    assert snapshots.offer(raft, "n2")
    assert snapshots.offer(raft, "n2")  # the core's re-offer while the first is on its way
    assert [image for _, image in fakes.sent] == [tmp_path / "image-1"] * 2
    assert fakes.taken == 1
    snapshots.forget(True, {"n2": fakes.applied})  # every follower is past it
    assert fakes.discarded == [tmp_path / "image-1"]
    assert not snapshots.offer(raft, "n2")


@pytest.mark.parametrize(
    ("meanwhile", "index"),
    [
        (lambda snapshots: snapshots.installed(10, 100), 10),  # a leader's snapshot replaced it all
        (lambda snapshots: snapshots.reset(0), 0),  # the member reopened its storage
    ],
    ids=["newer snapshot installed", "core rebuilt"],
)
async def test_a_copy_overtaken_meanwhile_is_dropped(
    nursery: trio.Nursery,
    tmp_path: Path,
    meanwhile: Callable[[Snapshots], None],
    index: int,
) -> None:
    fakes, snapshots, raft = setup(tmp_path, threshold=1)
    await copy_while(nursery, fakes, snapshots, lambda: meanwhile(snapshots))
    await snapshots.finish(raft)
    assert (fakes.compacted, snapshots.index) == ([], index)
    assert fakes.discarded == [tmp_path / "image-1"]


def propose(raft: Raft, fakes: Fakes, count: int, data: bytes = b"x") -> None:
    for _ in range(count):
        raft.propose(data)
    fakes.applied = raft.commit_index


async def test_with_a_share_a_large_state_waits_for_a_log_of_its_size(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """A copy of the whole state is not worth a few bytes of log: with a share of 0.5, the
    next snapshot waits for entries of half the last image's size, or for 20 times the
    threshold of them."""
    fakes, _, raft = setup(tmp_path, threshold=3)
    snapshots = Snapshots("n1", fakes, fakes, fakes, threshold=3, share=0.5, io=fakes.io,
                          discard=fakes.discarded.append)  # fmt: skip
    assert snapshots.due(fakes.applied, raft)  # the first: no image to weigh against yet
    fakes.release.set()
    await copy_while(nursery, fakes, snapshots, lambda: None)
    await snapshots.finish(raft)
    image_bytes = (tmp_path / "image-1").stat().st_size  # "state at 4": 10 bytes
    propose(raft, fakes, 3)
    snapshots.logged(3)
    assert not snapshots.due(fakes.applied, raft)  # 3 entries, but 3 bytes of 10
    snapshots.logged(image_bytes // 2 - 3)
    assert snapshots.due(fakes.applied, raft)
    propose(raft, fakes, 60)
    unsized = snapshots_of(fakes, 3)
    unsized.logged(0)
    assert unsized.due(fakes.applied, raft)  # without a share: the threshold alone


async def test_with_a_share_entries_past_the_cap_are_enough(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    fakes, _, raft = setup(tmp_path, threshold=3)
    snapshots = Snapshots("n1", fakes, fakes, fakes, threshold=3, share=1e9, io=fakes.io,
                          discard=fakes.discarded.append)  # fmt: skip
    fakes.release.set()
    await copy_while(nursery, fakes, snapshots, lambda: None)
    await snapshots.finish(raft)
    propose(raft, fakes, 59)
    assert not snapshots.due(fakes.applied, raft)
    propose(raft, fakes, 1)
    assert snapshots.due(fakes.applied, raft)  # 60 = 20 x 3 entries
