"""Several clients writing one file, driven through the mount's handlers (no kernel): what one
client committed is never overwritten by bytes another did not write.

Each promise here is also checked with two real mounts in tests/e2e/test_shared_files.py.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import trio

from ringfs.fs.operations import Operations
from ringfs.node.meta import commands
from tests.cluster.conftest import LocalNodes
from tests.cluster.test_files import (
    CHUNK,
    CTX,
    create,
    flushed,
    mount_ops,
    refuse_block_writes,
    setattr_size,
)

APPEND = os.O_WRONLY | os.O_APPEND


async def reopen(ops: Operations, ino: int, flags: int = os.O_RDWR) -> int:
    info = await ops.open(ino, flags, CTX)
    return int(info.fh)


async def content(ops: Operations, ino: int) -> bytes:
    fh = await reopen(ops, ino, os.O_RDONLY)
    size = (await ops.getattr(ino, CTX)).st_size
    data = await ops.read(fh, 0, size + 100)
    await ops.release(fh)
    assert len(data) == size
    return data


async def two_clients(
    nodes: LocalNodes, nursery: trio.Nursery, **overrides: Any
) -> tuple[Operations, Operations]:
    """Two mounts' handlers; `overrides` as for `mount_ops`."""
    return (
        await mount_ops(nodes, nursery, **overrides),
        await mount_ops(nodes, nursery, **overrides),
    )


async def shared_file(a: Operations, b: Operations, data: bytes) -> tuple[int, int, int]:
    """A file `a` created with `data` and flushed, then opened by `b` too: (a's handle, the
    inode, b's handle)."""
    fh, ino = await flushed(a, b"f", data)
    return fh, ino, await reopen(b, ino)


async def test_disjoint_writes_in_one_chunk_are_all_kept(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    fh, ino, theirs = await shared_file(a, b, b"." * 1000)
    await a.write(fh, 100, b"A" * 100)
    await b.write(theirs, 500, b"B" * 100)
    await a.flush(fh)
    await b.flush(theirs)  # built on the file before a's flush: it lays its bytes over a's
    expected = b"." * 100 + b"A" * 100 + b"." * 300 + b"B" * 100 + b"." * 400
    assert await content(a, ino) == expected
    # Each client's own reads see the other's bytes too once its commit was laid over them.
    assert await b.read(theirs, 0, 2000) == expected
    await a.release(fh)
    await b.release(theirs)


async def test_a_stale_flush_never_undoes_a_truncation(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    fh, ino = await create(a, b"f")
    old = os.urandom(3 * CHUNK)
    await a.write(fh, 0, old)
    await a.release(fh)
    stale = await reopen(b, ino)
    truncating = await reopen(a, ino)
    await setattr_size(a, ino, 100, truncating)
    await a.write(truncating, 0, b"A" * 100)
    await a.release(truncating)
    await b.write(stale, 50, b"B" * 10)
    await b.release(stale)  # its map still shows 3 chunks of old data
    assert await content(a, ino) == b"A" * 50 + b"B" * 10 + b"A" * 40


async def test_a_truncation_over_another_clients_commit_rebases_first(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    fh, ino, theirs = await shared_file(a, b, b"." * 300)
    await b.write(theirs, 0, b"B" * 100)
    await a.write(fh, 200, b"A" * 100)
    await b.flush(theirs)
    # a's truncation flushes first, holding writes off: its commit is laid over b's.
    await setattr_size(a, ino, 250, fh)
    assert await content(a, ino) == b"B" * 100 + b"." * 100 + b"A" * 50
    await a.release(fh)
    await b.release(theirs)


async def test_overlapping_flushes_end_as_one_of_them_whole(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    mine, ino, theirs = await shared_file(a, b, b"")
    ours, others = b"a" * (2 * CHUNK + 10), b"b" * (2 * CHUNK + 10)
    await a.write(mine, 0, ours)
    await b.write(theirs, 0, others)
    async with trio.open_nursery() as both:
        both.start_soon(a.flush, mine)
        both.start_soon(b.flush, theirs)
    assert await content(a, ino) in (ours, others)
    await a.release(mine)
    await b.release(theirs)


async def test_appends_from_two_clients_keep_every_record_once(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    fh, ino = await create(a, b"log")
    await a.release(fh)
    handles = {a: await reopen(a, ino, APPEND), b: await reopen(b, ino, APPEND)}
    records: dict[Operations, list[bytes]] = {a: [], b: []}

    async def append(ops: Operations, tag: bytes) -> None:
        for i in range(40):
            record = b"%s%03d:" % (tag, i) + tag * (i * 997 % 3000) + b"\n"
            # The kernel's idea of the end is stale: the offset it gives is not where it goes.
            await ops.write(handles[ops], 0, record)
            await ops.fsync(handles[ops], False)
            records[ops].append(record)

    async with trio.open_nursery() as both:
        both.start_soon(append, a, b"A")
        both.start_soon(append, b, b"B")
    data = await content(b, ino)
    lines = [line + b"\n" for line in data.split(b"\n")[:-1]]
    assert sorted(lines) == sorted(records[a] + records[b])
    assert b"".join(lines) == data  # nothing else: no zeros, no torn records
    for ops in (a, b):  # each client's records in its own order
        mine = [line for line in lines if line in records[ops]]
        assert mine == records[ops]
        await ops.release(handles[ops])


async def test_an_open_sees_what_another_client_closed_even_when_open_here(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    fh, ino = await flushed(a, b"f", b"1" * 1000)
    held = await reopen(b, ino, os.O_RDONLY)  # b keeps it open throughout
    assert (await b.getattr(ino, CTX)).st_size == 1000
    await a.write(fh, 1000, b"2" * 5000)
    await a.release(fh)
    again = await b.open(ino, os.O_RDONLY, CTX)
    assert not again.keep_cache  # the kernel must drop what it cached of the old version
    assert await b.read(again.fh, 0, 10_000) == b"1" * 1000 + b"2" * 5000
    await b.release(again.fh)
    await b.release(held)


async def test_chunk_maps_larger_than_a_message_are_paged(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "CHUNKS_PER_MESSAGE", 4)
    a, b = await two_clients(small_chunks, nursery)
    fh, ino = await create(a, b"big")
    data = os.urandom(10 * CHUNK + 5)
    await a.write(fh, 0, data)
    await a.release(fh)  # three commits of at most four chunks
    assert await content(b, ino) == data  # three pages read


async def test_failed_closes_give_their_buffers_back(
    small_chunks: LocalNodes,
    nursery: trio.Nursery,
    expected_logs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected_logs += ["not stored", "upload failed", "flush failed", "is lost"]
    ops = await mount_ops(small_chunks, nursery, write_buffers=2)
    refuse_block_writes(monkeypatch, "EIO")
    for i in range(4):
        fh, _ = await create(ops, b"lost%d" % i)
        await ops.write(fh, 0, b"x" * 100)
        await ops.release(fh)  # the final flush fails: the bytes are given up
    monkeypatch.undo()
    assert ops.files.budget.free == 2
    fh, ino = await create(ops, b"kept")
    data = os.urandom(3 * CHUNK)
    with trio.fail_after(30):
        await ops.write(fh, 0, data)
        await ops.release(fh)
    assert await content(ops, ino) == data


async def test_a_reader_whose_blocks_were_replaced_and_deleted_reads_the_new_ones(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery, inline_max=0)
    fh, ino = await flushed(a, b"f", b"old" * 1000)
    reader = await reopen(b, ino, os.O_RDONLY)
    await a.write(fh, 0, b"new" * 1000)
    await a.release(fh)
    [old] = b._open[ino].chunks.values()
    for node in small_chunks.map.nodes:  # as the garbage collector would
        await b.cluster.pool.call(node.address, "block.delete", [old.block_id])
    assert await b.read(reader, 0, 3000) == b"new" * 1000
    await b.release(reader)
