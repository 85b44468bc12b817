"""Changes answered by the mount in the directories it holds, with a real state machine as the
leader: what the mount shows is what the leader holds once the batch is applied."""

from __future__ import annotations

import stat
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import trio
import trio.testing

from ringfs.fs import writebehind
from ringfs.fs.cluster import Answer, Cluster
from ringfs.fs.metacache import MetaCache
from ringfs.fs.metadata import Metadata
from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import (
    ROOT_INO,
    Batch,
    Command,
    CommitChunks,
    Entry,
    GetAttr,
    Init,
    Lookup,
    Mkdir,
    Mknod,
    OpenSession,
    Query,
    ReadDir,
    Release,
    Rename,
    Rmdir,
    Setattr,
    Unlink,
    decode_result,
)
from ringfs.node.meta.feed import Changes
from ringfs.node.meta.replica import stamp
from ringfs.node.meta.state import MetaState

ME = b"m" * 16
REG = stat.S_IFREG | 0o644


class StateLeader:
    """The meta-group leader, played by a state machine in this process."""

    def __init__(self, state: MetaState) -> None:
        self.state = state
        self.client_id = ME
        self.session_listeners: list[Callable[[bytes], None]] = []
        self.sent: list[Command] = []
        #: The task that sent each command.
        self.senders: list[str] = []
        #: While set and not open, commands wait for it on their way.
        self.gate: trio.Event | None = None
        self._seq = 0

    def take_seq(self) -> int:
        self._seq += 1
        return self._seq

    async def meta_command(self, command: Command, seq: int | None = None) -> Answer:
        self.senders.append(trio.lowlevel.current_task().name)
        if self.gate is not None:
            await self.gate.wait()
        await trio.sleep(0.001)  # on its way
        self.sent.append(command)
        seq = self.take_seq() if seq is None else seq
        [outcome] = self.state.apply_batch([Entry(stamp(command, 7_000), ME, seq)])
        changed = {ino for _, inodes, _ in self.state.take_changes() for ino in inodes}
        if outcome.error is not None:
            raise NodeError(outcome.error, command.OP)
        result = decode_result(command, outcome.result)
        return Answer(result, self.state.attrs(sorted(changed)))

    async def meta_query(self, query: Query) -> Any:
        self.sent.append(cast(Command, query))
        return self.state.query(query)


@pytest.fixture
def state(tmp_path: Path) -> Iterator[MetaState]:
    with MetaState(tmp_path / "meta.db") as meta:
        meta.apply_batch([Entry(Init(4096, 0, 0, 1_000))])
        meta.apply_batch([Entry(OpenSession(), client) for client in (ME, b"o")])
        yield meta


@pytest.fixture
async def meta(state: MetaState) -> AsyncIterator[Metadata]:
    cache = MetaCache(ME, clock=lambda: 0.0)
    cache.apply(Changes(1, False, ()), sent_at=0.0)  # fresh, as the feed keeps it
    metadata = Metadata(cast(Cluster, StateLeader(state)), cache)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(metadata.behind.run, name="write-behind")
        yield metadata
        nursery.cancel_scope.cancel()


def leader(meta: Metadata) -> StateLeader:
    return cast(StateLeader, meta.cluster)


async def directory_made_here(meta: Metadata) -> int:
    """A directory this mount made, and so holds; the leader's record of what it was sent
    starts empty after it."""
    d: int = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))).ino
    leader(meta).sent.clear()
    leader(meta).senders.clear()
    return d


def sent_ops(meta: Metadata) -> list[str]:
    ops = []
    for command in leader(meta).sent:
        inner = command.commands if isinstance(command, Batch) else (command,)
        ops.append("+".join(c.OP for c in inner))
    return ops


def assert_shows_what_the_leader_holds(meta: Metadata, state: MetaState, d: int) -> None:
    names = {e.name: e.attr for e in state.query(ReadDir(d, 2, 1000))}
    for name, attr in names.items():
        assert meta.cache.lookup(d, name) == attr, name
    assert meta.cache.attr(d) == state.query(GetAttr(d))


async def test_changes_in_a_directory_the_mount_made_are_answered_here_and_sent_together(
    meta: Metadata, state: MetaState
) -> None:
    d = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o775, 0, 5, 0))).ino
    await meta.apply(Setattr(d, 0o2775, None, None, None, None, None, 0))
    assert sent_ops(meta) == ["reserve", "mkdir+delegate"]  # the chmod only adds: queued
    leader(meta).sent.clear()
    made = await meta.apply(Mknod(d, b"a", REG, 0, 1, 1, 0))
    sub = await meta.apply(Mkdir(d, b"sub", 0o755, 1, 1, 0))
    await meta.apply(Mknod(sub.ino, b"b", REG, 0, 1, 1, 0))
    await meta.apply(Mknod(d, b"c", REG, 0, 1, 1, 0))
    assert await meta.apply(Rename(d, b"a", d, b"c", 0, 0)) is not None  # replaces c
    gone = await meta.apply(Unlink(sub.ino, b"b", 0))
    assert gone.nlink == 0
    assert leader(meta).sent == []  # all answered here
    assert made.gid == 5  # inherited from the set-group-id directory, as the leader does
    assert stat.S_IMODE(sub.mode) & stat.S_ISGID
    with pytest.raises(NodeError, match="ENOENT"):
        await meta.lookup(d, b"a")  # renamed: known here
    # A query sends them first, in one batch.
    await meta.query(GetAttr(d))
    batch = "setattr+mknod+mkdir+delegate+mknod+mknod+rename+unlink"
    assert sent_ops(meta) == [batch, "getattr"]
    assert state.holders([d, sub.ino]) == {d: ME, sub.ino: ME}
    assert_shows_what_the_leader_holds(meta, state, d)
    assert_shows_what_the_leader_holds(meta, state, sub.ino)
    assert state.query(Lookup(d, b"c")).ino == made.ino


async def test_a_close_rides_with_the_create_it_follows(meta: Metadata, state: MetaState) -> None:
    d = await directory_made_here(meta)
    made = await meta.apply(Mknod(d, b"f", REG, 0, 0, 0, 0))
    commit = CommitChunks(made.ino, (), 0, None, None, 123, None, 0)
    after = await meta.apply(commit)
    assert after.mtime_ns == 123
    assert sent_ops(meta) == ["mknod+commit_chunks"]  # one replicated round for the file
    assert meta.cache.attr(made.ino) == state.query(GetAttr(made.ino))


async def test_changes_nobody_waits_for_go_together_soon_after_the_first(
    meta: Metadata, state: MetaState
) -> None:
    d = await directory_made_here(meta)
    sent, senders = leader(meta).sent, leader(meta).senders
    start = trio.current_time()
    await meta.apply(Mknod(d, b"a", REG, 0, 0, 0, 0))
    await meta.apply(Mknod(d, b"b", REG, 0, 0, 0, 0))
    assert sent == []  # answered here, queued
    while meta.behind.busy:  # noqa: ASYNC110 - the test watches the queue from outside
        await trio.sleep(0.001)
    assert trio.current_time() - start >= writebehind.FLUSH_DELAY
    assert (sent_ops(meta), senders) == (["mknod+mknod"], ["write-behind"])
    assert_shows_what_the_leader_holds(meta, state, d)
    # And again after the queue was empty.
    await meta.apply(Mknod(d, b"c", REG, 0, 0, 0, 0))
    await meta.behind.flushed()
    assert sent_ops(meta)[1:] == ["mknod"]


async def test_a_close_with_nothing_on_its_way_sends_its_batch_itself(
    meta: Metadata, state: MetaState
) -> None:
    d = await directory_made_here(meta)
    senders = leader(meta).senders
    first = await meta.apply(Mknod(d, b"first", REG, 0, 0, 0, 0))
    await meta.apply(CommitChunks(first.ino, (), 0, None, None, 1, None, 0))
    assert senders == [trio.lowlevel.current_task().name]
    # A close behind a batch on its way goes in the next one, which the write-behind task
    # sends: one batch at a time, in order.
    second = await meta.apply(Mknod(d, b"second", REG, 0, 0, 0, 0))
    third = await meta.apply(Mknod(d, b"third", REG, 0, 0, 0, 0))
    gate = leader(meta).gate = trio.Event()
    async with trio.open_nursery() as closes:
        closes.start_soon(meta.apply, CommitChunks(second.ino, (), 0, None, None, 2, None, 0))
        await trio.testing.wait_all_tasks_blocked()  # its batch is on its way
        await meta.apply(Mknod(d, b"fourth", REG, 0, 0, 0, 0))
        closes.start_soon(meta.apply, CommitChunks(third.ino, (), 0, None, None, 3, None, 0))
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert sent_ops(meta)[1:] == ["mknod+mknod+commit_chunks", "mknod+commit_chunks"]
    assert senders[1:] == ["ringfs.fs.metadata.Metadata.apply", "write-behind"]
    assert_shows_what_the_leader_holds(meta, state, d)


async def test_a_close_cancelled_while_its_batch_is_on_its_way_lets_it_arrive(
    meta: Metadata, state: MetaState
) -> None:
    d = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))).ino
    made = await meta.apply(Mknod(d, b"f", REG, 0, 0, 0, 0))
    gate = leader(meta).gate = trio.Event()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(meta.apply, CommitChunks(made.ino, (), 0, None, None, 123, None, 0))
            await trio.testing.wait_all_tasks_blocked()  # its batch is on its way
            scope.cancel()
            gate.set()
    assert scope.cancelled_caught
    assert not meta.behind.busy
    assert state.query(GetAttr(made.ino)).mtime_ns == 123
    assert_shows_what_the_leader_holds(meta, state, d)


async def test_what_cannot_be_foreseen_goes_to_the_leader_after_the_queue(
    meta: Metadata, state: MetaState
) -> None:
    d = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))).ino
    full = await meta.apply(Mkdir(d, b"full", 0o755, 0, 0, 0))
    await meta.apply(Mknod(full.ino, b"f", REG, 0, 0, 0, 0))
    empty = await meta.apply(Mkdir(d, b"empty", 0o755, 0, 0, 0))
    leader(meta).sent.clear()
    await meta.apply(Rmdir(d, b"empty", 0))  # empty and held: answered here
    with pytest.raises(NodeError, match="EEXIST"):
        await meta.apply(Mknod(d, b"full", REG, 0, 0, 0, 0))  # the name is taken
    with pytest.raises(NodeError, match="ENOTEMPTY"):
        await meta.apply(Rmdir(d, b"full", 0))
    ops = ["mkdir+delegate+mknod+mkdir+delegate+rmdir", "mknod", "rmdir"]
    assert sent_ops(meta) == ops
    assert empty.ino not in meta.behind.held
    assert state.holders([empty.ino, full.ino]) == {full.ino: ME}
    # A name outside the directories this mount holds goes to the leader.
    await meta.apply(Mknod(ROOT_INO, b"top", REG, 0, 0, 0, 0))
    assert sent_ops(meta)[-1] == "mknod"


async def test_a_recalled_directory_is_released_behind_its_changes(
    meta: Metadata, state: MetaState
) -> None:
    d = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))).ino
    leader(meta).sent.clear()
    await meta.apply(Mknod(d, b"f", REG, 0, 0, 0, 0))
    meta.behind.recall((d,))
    await meta.behind.drain()
    assert sent_ops(meta) == ["mknod+release"]
    assert state.holders([d]) == {}
    await meta.apply(Mknod(d, b"g", REG, 0, 0, 0, 0))  # no longer answered here
    assert sent_ops(meta)[-1] == "mknod"


async def test_changes_of_a_directory_taken_away_are_reported_lost(
    meta: Metadata, state: MetaState, expected_logs: list[str]
) -> None:
    expected_logs.append("acknowledged changes are lost")
    d = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))).ino
    # The leader took it back (this mount did not poll for too long).
    state.apply_batch([Entry(Release((d,), ME))])
    await meta.apply(Mknod(d, b"f", REG, 0, 0, 0, 0))
    with pytest.raises(NodeError, match="EIO"):
        await meta.behind.drain()  # an fsyncdir must not say they are durable
    await meta.behind.drain()  # said once
    assert meta.behind.held == set()
    assert meta.cache.attr(d) is None  # what it showed is forgotten
    assert state.query(ReadDir(d, 2, 10)) == []


async def test_unmount_gives_back_every_directory(meta: Metadata, state: MetaState) -> None:
    d = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))).ino
    e = (await meta.apply(Mkdir(d, b"e", 0o755, 0, 0, 0))).ino
    await meta.behind.release_all()
    assert state.holders([d, e]) == {}
    assert state.query(Lookup(d, b"e")).ino == e  # sent before the release


async def test_times_and_added_permissions_of_what_the_mount_made_are_answered_here(
    meta: Metadata, state: MetaState
) -> None:
    d = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o700, 0, 0, 0))).ino
    made = await meta.apply(Mknod(d, b"f", stat.S_IFREG | 0o600, 0, 0, 0, 0))
    leader(meta).sent.clear()
    touched = await meta.apply(Setattr(made.ino, 0o644, None, None, None, 11, 22, 0))
    assert (stat.S_IMODE(touched.mode), touched.atime_ns, touched.mtime_ns) == (0o644, 11, 22)
    await meta.apply(Setattr(d, 0o755, None, None, None, None, 33, 0))  # a held directory
    assert leader(meta).sent == []
    # Taking a permission away, a new owner: the leader first (behind what is queued).
    await meta.apply(Setattr(made.ino, 0o600, None, None, None, None, None, 0))
    assert sent_ops(meta) == ["mknod+setattr+setattr+setattr"]
    await meta.apply(Setattr(made.ino, None, 7, None, None, None, None, 0))
    assert sent_ops(meta)[-1] == "setattr"
    assert meta.cache.attr(made.ino) == state.query(GetAttr(made.ino))
    assert meta.cache.attr(d) == state.query(GetAttr(d))
    # An inode this mount did not make is left to the leader.
    other = state.apply_batch([Entry(Mknod(ROOT_INO, b"x", REG, 0, 0, 0, 5), b"o", 1)])[0]
    ino = decode_result(Mknod(ROOT_INO, b"x", REG, 0, 0, 0, 5), other.result).ino
    await meta.getattr(ino)
    await meta.apply(Setattr(ino, None, None, None, None, 1, 1, 0))
    assert sent_ops(meta)[-1] == "setattr"


async def test_a_query_waits_only_for_queued_changes_of_what_it_asks_about(
    meta: Metadata,
) -> None:
    d = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))).ino
    e = (await meta.apply(Mkdir(ROOT_INO, b"e", 0o755, 0, 0, 0))).ino
    leader(meta).sent.clear()
    await meta.apply(Mknod(d, b"f", REG, 0, 0, 0, 0))
    await meta.query(GetAttr(e))  # nothing queued about e: asked at once
    assert sent_ops(meta) == ["getattr"]
    await meta.query(GetAttr(d))
    assert sent_ops(meta) == ["getattr", "mknod", "getattr"]


async def test_creates_that_run_out_of_numbers_together_reserve_once(
    meta: Metadata, state: MetaState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new reservation replaces the one before it: two at once would leave creates with
    numbers the leader no longer holds for this mount."""
    monkeypatch.setattr(writebehind, "RESERVE_COUNT", 3)
    dirs = [(await meta.apply(Mkdir(ROOT_INO, b"d%d" % i, 0o755, 0, 0, 0))).ino for i in range(4)]

    async def create(d: int) -> None:
        for i in range(5):
            await meta.apply(Mknod(d, b"f%d" % i, REG, 0, 0, 0, 0))

    async with trio.open_nursery() as nursery:
        for d in dirs:
            nursery.start_soon(create, d)
    await meta.behind.drain()  # no change lost (an error would be logged, and fail the test)
    for d in dirs:
        assert len(state.query(ReadDir(d, 2, 100))) == 5
        assert_shows_what_the_leader_holds(meta, state, d)


async def test_what_the_leader_lists_or_looks_up_is_never_older_than_what_the_mount_shows(
    meta: Metadata, state: MetaState
) -> None:
    """A mkdir queued in a directory changes its link count: a listing of its parent or a
    lookup of it from the leader must not bring back the count from before."""

    def links(ino: int) -> int | None:
        attr = meta.cache.attr(ino)
        return None if attr is None else attr.nlink

    d = (await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))).ino
    await meta.behind.flushed()
    await meta.apply(Mkdir(d, b"sub", 0o755, 0, 0, 0))  # answered here, queued
    assert links(d) == 3
    page = await meta.readdir(ROOT_INO, 0, 100)
    assert [e.attr.nlink for e in page if e.name == b"d"] == [3]
    assert links(d) == 3
    await meta.apply(Mkdir(d, b"sub2", 0o755, 0, 0, 0))
    meta.cache.forget((), [(ROOT_INO, b"d")])  # the kernel asks for the name again
    assert (await meta.lookup(ROOT_INO, b"d")).nlink == 4
    assert links(d) == 4
    # An answer that left the leader before a change this mount answered is not kept.
    await meta.behind.flushed()
    stamp, before = meta.cache.stamp(), state.query(GetAttr(d))
    await meta.apply(Mkdir(d, b"sub3", 0o755, 0, 0, 0))
    meta.cache.keep_attr(before, stamp)
    assert links(d) == 5
