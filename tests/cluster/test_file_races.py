"""Races inside one mount and between two, forced step by step: a put, a block fetch, a
commit or a chunk-map read held until the test lets it go, so that each interleaving the code
allows is the one that runs."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
import trio

from ringfs.fs.cluster import Cluster, StoredBlock
from ringfs.node.errors import Unavailable
from ringfs.node.meta.commands import Attr, Chunk, Command
from tests.cluster.conftest import LocalNodes
from tests.cluster.test_files import (
    CHUNK,
    CTX,
    KernelLog,
    create,
    flushed,
    mount_ops,
    setattr_size,
)
from tests.cluster.test_shared_files import APPEND, content, reopen, shared_file, two_clients


async def until(condition: Callable[[], bool]) -> None:
    """Let the other tasks run until `condition` holds (at most 10 s)."""
    with trio.fail_after(10):
        while not condition():  # noqa: ASYNC110 - state no event signals
            await trio.sleep(0.001)


async def test_truncation_while_another_handles_flush_must_rebase_does_not_deadlock(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    fh, ino, theirs = await shared_file(a, b, b"." * 300)
    other = await reopen(a, ino)
    await b.write(theirs, 0, b"B" * 100)
    await b.flush(theirs)  # a's chunk 0 is now stale: a's next commit meets CHANGED
    await a.write(fh, 200, b"A" * 50)
    state = a._open[ino]
    with trio.fail_after(20):
        async with trio.open_nursery() as tasks:
            tasks.start_soon(a.fsync, fh, False)  # holds the flush lock, will need the write lock
            await until(state._flush_lock.locked)
            # ftruncate on another handle: takes the write lock, then waits for the flush lock
            tasks.start_soon(setattr_size, a, ino, 260, other)
    assert await content(a, ino) == b"B" * 100 + b"." * 100 + b"A" * 50 + b"." * 10


class GatedPuts:
    """put_block of one client, held until the test says go (or fail)."""

    def __init__(self, cluster: Cluster) -> None:
        self.real = cluster.put_block
        # (go, fail?, the block's first bytes) of each put held, in the order they came.
        self.waiting: list[tuple[trio.Event, list[bool], bytes]] = []
        self.open = False

    async def put(self, block_id: bytes, data: memoryview, checksum: bytes) -> StoredBlock:
        if self.open:
            return await self.real(block_id, data, checksum)
        go, fail = trio.Event(), [False]
        self.waiting.append((go, fail, bytes(data[:16])))
        await go.wait()
        if fail[0]:
            raise Unavailable("refused by the test", [])
        return await self.real(block_id, data, checksum)


async def test_a_write_waiting_for_a_buffer_does_not_overwrite_a_failed_uploads_bytes(
    small_chunks: LocalNodes,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    expected_logs: list[str],
) -> None:
    expected_logs += ["upload failed"]
    ops = await mount_ops(small_chunks, nursery, write_buffers=2, inline_max=0)
    gated = GatedPuts(ops.cluster)
    monkeypatch.setattr(ops.cluster, "put_block", gated.put)
    fh, ino = await create(ops, b"f")
    first, second = os.urandom(CHUNK), os.urandom(CHUNK)
    await ops.write(fh, 0, first)  # chunk 0 full: its upload starts (held)
    await ops.write(fh, CHUNK, second)  # chunk 1 full: both buffer slots are uploads now
    state = ops._open[ino]
    async with trio.open_nursery() as tasks:
        # Patches chunk 0: needs a new buffer, waits for a free slot.
        tasks.start_soon(ops.write, fh, 5, b"x" * 10)
        await until(lambda: 0 in state._loading and len(gated.waiting) == 2)
        # The two checksums run in worker threads: the puts come in either order.
        [chunk0] = [held for held in gated.waiting if held[2] == first[:16]]
        [chunk1] = [held for held in gated.waiting if held[2] == second[:16]]
        chunk0[1][0] = True
        chunk0[0].set()  # chunk 0's upload fails: its buffer goes back to dirty, keeping its slot
        await until(lambda: 0 in state._dirty and 0 not in state._uploads)
        gated.open = True
        chunk1[0].set()  # chunk 1 stored: a slot frees, the waiting write takes it
    await ops.flush(fh)
    await ops.release(fh)
    expected = first[:5] + b"x" * 10 + first[15:] + second
    assert await content(ops, ino) == expected
    assert ops.files.budget.free == 2


async def test_an_open_during_a_writes_block_fetch_does_not_change_the_writes_base(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = await two_clients(small_chunks, nursery, inline_max=0)
    fh, ino, theirs = await shared_file(a, b, b"." * 1000)
    await b.write(theirs, 500, b"B" * 100)
    await b.flush(theirs)
    cache = a.files.cache
    real_get = cache.get
    fetching, fetched = trio.Event(), trio.Event()

    async def slow_get(block_id: bytes, checksum: bytes) -> bytes:
        fetching.set()
        await fetched.wait()  # a fetch over the network, slower than an open
        return await real_get(block_id, checksum)

    monkeypatch.setattr(cache, "get", slow_get)
    async with trio.open_nursery() as tasks:
        tasks.start_soon(a.write, fh, 100, b"A" * 100)  # loads a's (old) chunk 0
        await fetching.wait()
        reader = await reopen(a, ino, os.O_RDONLY)  # another process opens: refresh
        fetched.set()
    await a.flush(fh)
    expected = b"." * 100 + b"A" * 100 + b"." * 300 + b"B" * 100 + b"." * 400
    assert await content(b, ino) == expected
    await a.release(reader)
    await a.release(fh)
    await b.release(theirs)


async def test_a_positional_write_after_an_append_stays_where_it_was_written(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    fh, ino = await create(a, b"log")
    await a.write(fh, 0, b"." * 1000)
    await a.release(fh)
    appending, positional = await reopen(a, ino, APPEND), await reopen(a, ino)
    theirs = await reopen(b, ino, APPEND)
    await b.write(theirs, 0, b"B" * 50)
    await b.release(theirs)  # the file ends at 1050 now
    await a.write(appending, 0, b"R" * 100)  # an append: goes to the end
    await a.write(positional, 5000, b"P" * 10)  # pwrite at 5000 on another handle
    await a.flush(appending)  # CHANGED: the appended record moves to 1050
    await a.release(appending)
    await a.release(positional)
    data = await content(b, ino)
    assert data[:1150] == b"." * 1000 + b"B" * 50 + b"R" * 100
    assert data[5000:] == b"P" * 10  # fails: the pwrite moved to 5050


async def test_an_append_after_another_mount_truncated_goes_to_the_new_end(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    fh, ino = await create(a, b"log")
    old = os.urandom(3 * CHUNK)
    await a.write(fh, 0, old)
    await a.release(fh)
    positional, appending = await reopen(a, ino), await reopen(a, ino, APPEND)
    truncating = await reopen(b, ino)
    await setattr_size(b, ino, CHUNK + 10, truncating)
    await b.release(truncating)
    await a.write(positional, 0, b"x")
    await a.flush(positional)  # chunk 0 untouched by the truncation: commits without rebase
    await a.write(appending, 0, b"R" * 100)
    await a.flush(appending)
    await a.release(appending)
    await a.release(positional)
    # fails: the record lands at 3 * CHUNK, after a hole of zeros, and the commit's
    # expect_size (the committed size a knew) held
    assert await content(b, ino) == b"x" + old[1 : CHUNK + 10] + b"R" * 100


async def test_an_open_after_a_conflict_free_commit_drops_pages_another_mount_changed(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    a, b = await two_clients(small_chunks, nursery)
    fh, ino = await flushed(a, b"f", b"." * (2 * CHUNK))
    await a.read(fh, CHUNK, 100)  # a's kernel caches chunk 1's pages
    theirs = await reopen(b, ino)
    await b.write(theirs, CHUNK, b"B" * 100)
    await b.release(theirs)  # b's close returned
    await a.write(fh, 0, b"A" * 100)
    await a.flush(fh)  # chunk 0 only: no conflict, no rebase
    await a.release(fh)
    info = await a.open(ino, os.O_RDONLY, CTX)
    # close-to-open: this open began after b's close, so a's cached pages of chunk 1 must go
    kernel = a.kernel
    assert isinstance(kernel, KernelLog)
    assert not info.keep_cache
    assert ino in kernel.data  # and the pages handles hold now go too
    await a.release(info.fh)


async def test_an_open_whose_map_answer_arrives_after_our_own_commit_keeps_our_bytes(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = await mount_ops(small_chunks, nursery)
    fh, ino = await flushed(ops, b"f", b"1" * 1000)
    await ops.write(fh, 0, b"2" * 2000)  # process 1 writes
    real = ops.cluster.read_chunks
    answered, deliver = trio.Event(), trio.Event()

    async def late_answer(ino: int, known: Any = None) -> tuple[Attr, list[Chunk], int]:
        result = await real(ino, known)  # linearized before the commit below...
        answered.set()
        await deliver.wait()  # ...but its task runs after the commit's
        return result

    monkeypatch.setattr(ops.cluster, "read_chunks", late_answer)
    async with trio.open_nursery() as tasks:
        handles: list[int] = []

        async def open_it() -> None:
            handles.append(await reopen(ops, ino, os.O_RDONLY))  # process 2 opens

        tasks.start_soon(open_it)
        await answered.wait()
        await ops.flush(fh)  # process 1: fsync returns, its bytes are committed
        deliver.set()
    monkeypatch.undo()
    # "Within a mount, reads see its own writes at once": fails, it reads b"1" * 1000
    assert await ops.read(handles[0], 0, 5000) == b"2" * 2000
    assert await ops.read(fh, 0, 5000) == b"2" * 2000
    await ops.release(handles[0])
    await ops.release(fh)


async def test_fsync_returns_while_another_thread_keeps_appending_to_the_same_chunk(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    ops = await mount_ops(small_chunks, nursery)
    fh, ino = await create(ops, b"log")
    stop = trio.Event()
    offset = 0

    async def logger() -> None:
        nonlocal offset
        while not stop.is_set():
            await ops.write(fh, offset, b"line\n")
            offset += 5
            await trio.sleep(0.002)

    async with trio.open_nursery() as tasks:
        tasks.start_soon(logger)
        await trio.sleep(0.05)
        try:
            with trio.fail_after(10):
                await ops.fsync(fh, False)
        finally:
            stop.set()
    await ops.release(fh)


async def test_two_last_releases_flushing_at_once_leave_the_open_state_alone(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = await mount_ops(small_chunks, nursery)
    real_command = ops.cluster.meta_command
    held: list[trio.Event] = []

    async def held_commits(command: Command, seq: int | None = None) -> Any:
        if command.OP == "commit_chunks":
            go = trio.Event()
            held.append(go)
            await go.wait()
        return await real_command(command, seq)

    first, ino = await create(ops, b"f")
    await ops.write(first, 0, b"1" * 100)
    monkeypatch.setattr(ops.cluster, "meta_command", held_commits)
    async with trio.open_nursery() as tasks:
        tasks.start_soon(ops.release, first)  # last handle: flushes (its commit is held)
        await until(lambda: len(held) == 1)
        second = await reopen(ops, ino)  # opened again meanwhile
        await ops.write(second, 100, b"2" * 100)
        tasks.start_soon(ops.release, second)  # last handle again: waits for the flush lock
        await until(lambda: ops._open[ino]._flush_lock.statistics().tasks_waiting == 1)
        held[0].set()  # the first release finishes; the second still flushes
        await until(lambda: len(held) == 2)
        third = await reopen(ops, ino)  # this open must share the state still flushing
        held[1].set()  # the second release finishes: the third open's state stays
    monkeypatch.undo()
    assert ino in ops._open
    await ops.write(third, 200, b"3" * 100)
    fourth = await reopen(ops, ino, os.O_RDONLY)
    assert await ops.read(fourth, 0, 1000) == b"1" * 100 + b"2" * 100 + b"3" * 100
    await ops.release(fourth)
    await ops.release(third)


async def test_a_truncation_that_happened_reports_success(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = await mount_ops(small_chunks, nursery)
    fh, ino = await flushed(ops, b"f", b"x" * 1000)

    async def no_leader(ino: int, known: Any = None) -> tuple[Attr, list[Chunk], int]:
        raise Unavailable("metadata (no meta-group leader answered)", [])

    monkeypatch.setattr(ops.cluster, "read_chunks", no_leader)  # the group fails right after
    await setattr_size(ops, ino, 10, fh)  # it happened: no error may say otherwise
    monkeypatch.undo()
    assert (await ops.getattr(ino, CTX)).st_size == 10
    assert await ops.read(fh, 0, 1000) == b"x" * 10
    await ops.release(fh)
