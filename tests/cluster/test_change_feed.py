"""The change feed as mounts poll it: an answer names each command's session, and a poll that
waited gathers the changes that follow the first one."""

from __future__ import annotations

import trio

from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.meta.commands import ROOT_INO, Mkdir
from ringfs.node.meta.feed import Changes
from ringfs.node.meta.replica import FEED_GATHER
from tests.cluster.conftest import LocalNodes


async def test_a_poll_that_waited_gathers_before_it_answers(nodes: LocalNodes) -> None:
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    # The session opens with the first command, a change of its own: not in the poll below,
    # or the poll could answer with it alone, on a busy machine.
    await cluster.meta_command(Mkdir(ROOT_INO, b"first", 0o755, 0, 0, 0), cluster.take_seq())
    since = (await cluster.meta_changes(0)).upto
    answers: list[tuple[Changes, float]] = []

    async def poll() -> None:
        changes = await cluster.meta_changes(since)
        answers.append((changes, trio.current_time()))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll)
        await trio.sleep(0.05)  # the poll waits at the leader
        sent = trio.current_time()
        seq = cluster.take_seq()
        made = (await cluster.meta_command(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0), seq)).result
    [(changes, answered)] = answers
    assert answered - sent >= FEED_GATHER  # not at once after the first change
    [record] = [r for r in changes.records if r.client_id == cluster.client_id]
    assert (record.seq, record.inodes) == (seq, (ROOT_INO, made.ino))


async def test_a_poll_from_behind_is_answered_with_what_it_missed(nodes: LocalNodes) -> None:
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    since = (await cluster.meta_changes(0)).upto
    for name in (b"a", b"b"):
        await cluster.meta_apply(Mkdir(ROOT_INO, name, 0o755, 0, 0, 0))
    changes = await cluster.meta_changes(since)
    names = [entry[1] for record in changes.records for entry in record.entries]
    assert names == [b"a", b"b"]
