"""The change feed as mounts poll it: an answer names each command's session, a poll that
waited gathers the changes that follow the first one, and a client's own changes are no reason
to answer its poll."""

from __future__ import annotations

import pytest
import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.meta import replica
from ringfs.node.meta.commands import ROOT_INO, Mkdir
from ringfs.node.meta.feed import Changes
from ringfs.node.meta.replica import FEED_GATHER
from tests.cluster.conftest import LocalNodes


async def mkdir(cluster: Cluster, name: bytes) -> tuple[int, int]:
    """Make directory `name` in the root; return the command's seq and the new inode."""
    seq = cluster.take_seq()
    made = await cluster.meta_command(Mkdir(ROOT_INO, name, 0o755, 0, 0, 0), seq)
    return seq, made.result.ino


async def test_a_poll_that_waited_gathers_before_it_answers(nodes: LocalNodes) -> None:
    poller, other = await nodes.client(), await nodes.client()
    await wait_for_filesystem(poller)
    since = (await poller.meta_changes(0)).upto
    answers: list[tuple[Changes, float]] = []

    async def poll() -> None:
        changes = await poller.meta_changes(since)
        answers.append((changes, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(0.05)  # the poll waits at the leader
        sent = trio.current_time()
        seq, ino = await mkdir(other, b"d")
    [(changes, answered)] = answers
    assert answered - sent >= FEED_GATHER  # not at once after the first change
    [record] = [r for r in changes.records if r.client_id == other.client_id]
    assert (record.seq, record.inodes) == (seq, (ROOT_INO, ino))


async def test_a_poll_from_behind_is_answered_with_what_it_missed(nodes: LocalNodes) -> None:
    poller, other = await nodes.client(), await nodes.client()
    await wait_for_filesystem(poller)
    since = (await poller.meta_changes(0)).upto
    for name in (b"a", b"b"):
        await other.meta_apply(Mkdir(ROOT_INO, name, 0o755, 0, 0, 0))
    changes = await poller.meta_changes(since)
    names = [entry[1] for record in changes.records for entry in record.entries]
    assert names == [b"a", b"b"]


async def test_own_changes_wait_for_anothers_or_the_poll_s_end(
    nodes: LocalNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount knows its own changes from their answers; waking its poll for each of them cost
    the leader and the mount a round trip for every second file a mount made."""
    monkeypatch.setattr(replica, "FEED_WAIT", 30.0)
    poller, other = await nodes.client(), await nodes.client()
    await wait_for_filesystem(poller)
    await mkdir(poller, b"first")  # opens the poller's session
    since = (await poller.meta_changes(0)).upto
    answers: list[Changes] = []

    async def poll(since: int) -> None:
        answers.append(await poller.meta_changes(since))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll, since)
        mine = [(await mkdir(poller, name))[0] for name in (b"a", b"b")]
        await trio.sleep(1.0)
        assert answers == []  # still waiting: nothing another client did
        seq, _ = await mkdir(other, b"c")
    [changes] = answers
    told = [(r.client_id, r.seq) for r in changes.records]
    assert told == [(poller.client_id, s) for s in mine] + [(other.client_id, seq)]
    # From behind on its own changes only: still no news.
    await mkdir(poller, b"d")
    with trio.move_on_after(1.0) as waited:
        await poll(changes.upto)
    assert waited.cancelled_caught
