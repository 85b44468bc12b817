"""Opening a file again. A mount that kept a file's chunk map and watches the file opens it
from what it kept, asking nobody: the leader holds back another client's change of the file
until this mount's change feed heard of it. Without a watch that holds, the mount asks with
the version of the map it kept, and the leader sends no chunks while the file is at it.
Close-to-open holds either way: once another client's close returned, the open reads the new
map and the new bytes.

Driven through the mount's handlers (no kernel); tests/e2e/test_coherent_cache.py checks the
same with two real mounts.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from ringfs.fs.operations import Operations
from ringfs.node.meta.commands import Attr, Chunk
from ringfs.node.meta.feed import Changes
from tests.cluster.conftest import LocalNodes
from tests.cluster.test_files import CHUNK, flushed, mount_ops
from tests.cluster.test_shared_files import content, reopen, two_clients

#: (the version asked with, or 0; the attributes and chunks the leader sent)
Answers = list[tuple[int, Attr, list[Chunk]]]


def record_map_reads(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> Answers:
    """Every first page of a chunk map `ops` reads from the leader from now on."""
    answers: Answers = []
    real = ops.cluster._chunk_page

    async def recording(ino: int, first: int, unless_version: int = 0) -> Any:
        answer = await real(ino, first, unless_version)
        if first == 0:
            answers.append((unless_version, answer[0], answer[1]))
        return answer

    monkeypatch.setattr(ops.cluster, "_chunk_page", recording)
    return answers


def without_watches(ops: Operations, monkeypatch: pytest.MonkeyPatch) -> None:
    """`ops` trusts no watch (as when its feed is late): every open asks the leader."""
    monkeypatch.setattr(ops.files.meta.cache, "watching", lambda ino: False)


async def following(*mounts: Operations) -> None:
    """Wait until each mount heard the feed: the watches registered before its first answer
    are dropped with it (the mount cannot tell that leader's from an older one's)."""
    for ops in mounts:
        while not ops.files.meta.cache.fresh():  # noqa: ASYNC110
            await trio.sleep(0.01)


async def rewrite(ops: Operations, ino: int, data: bytes) -> None:
    fh = await reopen(ops, ino)
    await ops.write(fh, 0, data)
    await ops.release(fh)


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "blocks"])
async def test_a_watched_file_opens_again_without_asking(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    ops = await mount_ops(small_chunks, nursery, **({} if inline else {"inline_max": 0}))
    await following(ops)
    data = os.urandom(3 * CHUNK + 100 if not inline else 1000)
    fh, ino = await flushed(ops, b"f", data)
    await ops.release(fh)
    answers = record_map_reads(ops, monkeypatch)
    assert await content(ops, ino) == data
    new = os.urandom(len(data))
    await rewrite(ops, ino, new)  # this mount's own change: its kept map is the new one
    assert await content(ops, ino) == new
    assert answers == []


@pytest.mark.parametrize("inline", [True, False], ids=["inline", "blocks"])
async def test_without_a_watch_a_file_opened_again_is_read_with_the_map_kept(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    ops = await mount_ops(small_chunks, nursery, **({} if inline else {"inline_max": 0}))
    without_watches(ops, monkeypatch)
    data = os.urandom(3 * CHUNK + 100 if not inline else 1000)
    fh, ino = await flushed(ops, b"f", data)
    await ops.release(fh)
    answers = record_map_reads(ops, monkeypatch)
    assert await content(ops, ino) == data
    ((asked, attr, chunks),) = answers
    assert asked == attr.version
    assert chunks == []  # the leader sent none: the mount read with the map it kept
    new = os.urandom(len(data))
    await rewrite(ops, ino, new)  # this mount's own change: its kept map is the new one
    answers.clear()
    assert await content(ops, ino) == new
    assert [chunks for _, _, chunks in answers] == [[]]


async def test_an_open_after_another_clients_change_reads_the_new_map(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    await following(a, b)
    data = os.urandom(1000)
    fh, ino = await flushed(a, b"f", data)
    await a.release(fh)
    assert await content(a, ino) == data  # a keeps the map
    answers = record_map_reads(a, monkeypatch)
    assert await content(a, ino) == data
    assert answers == []  # a watches the file
    new = data[:10] + os.urandom(990)  # the same size, and the same first bytes
    await rewrite(b, ino, new)  # its close waits until a's feed heard of it
    assert await content(a, ino) == new  # at once: close-to-open
    (asked, attr, chunks), *_ = answers
    assert asked
    assert asked != attr.version
    assert chunks[0].data == new


async def test_a_close_waits_for_a_watcher_whose_feed_stopped(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mount that stopped hearing the feed holds its watches until its lease runs out; the
    other client's close returns after that, and the open then reads the new bytes."""
    a, b = await two_clients(small_chunks, nursery)
    await following(a, b)
    data = os.urandom(1000)
    fh, ino = await flushed(a, b"f", data)
    await a.release(fh)
    assert await content(a, ino) == data
    real = a.cluster.meta_changes
    polls, deaf = [], trio.Event()

    async def stopped(since: int, failed: Any) -> Changes:
        polls.append(since)
        if len(polls) == 1:
            return await real(since, failed)  # the last poll a sends
        deaf.set()  # its answer was taken: from now on, a hears nothing
        await trio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(a.cluster, "meta_changes", stopped)
    await deaf.wait()
    assert a.files.meta.cache.watching(ino)  # its last answer came a moment ago
    new = os.urandom(1000)
    await rewrite(b, ino, new)
    assert await content(a, ino) == new
