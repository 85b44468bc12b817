"""The mount's handlers driven directly (no kernel) against in-process nodes: write-back
buffers, reads of our own writes, close-to-open between two clients, truncation, failures."""

from __future__ import annotations

import dataclasses
import errno
import gc
import os
import random
import stat
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pyfuse3
import pytest
import trio
import trio.lowlevel

from ringfs.fs.cluster import Answer
from ringfs.fs.files import FileState
from ringfs.fs.mount import MountConfig, create_operations, wait_for_filesystem
from ringfs.fs.operations import PURGE_DELAY, Operations
from ringfs.node.blocks.store import BlockStore
from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import Command, GetAttr, Mkdir, Purge
from tests.cluster.conftest import SMALL_CHUNK, LocalNodes

CHUNK = SMALL_CHUNK
ROOT = pyfuse3.ROOT_INODE
CTX: Any = SimpleNamespace(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), umask=0o022)


class KernelLog:
    """A `KernelCache` with no kernel: it notes what the mount told it to forget."""

    def __init__(self) -> None:
        self.attrs: list[int] = []
        self.data: list[int] = []
        self.entries: list[tuple[int, bytes]] = []

    def forget_attrs(self, ino: int) -> None:
        self.attrs.append(ino)

    def forget_data(self, ino: int) -> None:
        self.data.append(ino)

    def forget_entry(self, parent: int, name: bytes) -> None:
        self.entries.append((parent, name))


async def mount_ops(
    nodes: LocalNodes, nursery: trio.Nursery, write_buffers: int = 16, **overrides: Any
) -> Operations:
    """A mount's handlers on `nodes`, with `MountConfig` fields overridden (`inline_max=0`
    sends every block to the storage nodes, for tests of uploads with small files)."""
    cluster = await nodes.client()
    config = MountConfig(
        cluster=cluster.config, mountpoint=Path("/unused"), write_buffers=write_buffers
    )
    config = dataclasses.replace(config, **overrides)
    return await create_operations(cluster, config, nursery, KernelLog())


async def create(ops: Operations, name: bytes) -> tuple[int, int]:
    info, entry = await ops.create(ROOT, name, 0o644, os.O_WRONLY, CTX)
    return info.fh, entry.st_ino


async def flushed(ops: Operations, name: bytes, data: bytes) -> tuple[int, int]:
    """A new file holding `data`, flushed and still open: (handle, inode)."""
    fh, ino = await create(ops, name)
    await ops.write(fh, 0, data)
    await ops.flush(fh)
    return fh, ino


async def setattr_mode(ops: Operations, ino: int, mode: int) -> None:
    """chmod(2), as the kernel asks for it."""
    await ops.setattr(ino, _attributes(st_mode=mode), _fields("mode"), None, CTX)


def _fields(*changed: str) -> Any:
    names = ("mode", "uid", "gid", "size", "atime", "mtime", "ctime")
    return SimpleNamespace(**{f"update_{name}": name in changed for name in names})


def _attributes(**values: int) -> pyfuse3.EntryAttributes:
    attr = pyfuse3.EntryAttributes()
    for name, value in values.items():
        setattr(attr, name, value)
    return attr


async def setattr_size(ops: Operations, ino: int, size: int, fh: int | None = None) -> None:
    """truncate(2) to `size`, as the kernel asks for it."""
    await ops.setattr(ino, _attributes(st_size=size), _fields("size"), fh, CTX)


async def test_uploaded_chunks_are_committed_soon_without_a_flush(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    writer = await mount_ops(small_chunks, nursery, commit_within=0.2)
    reader = await mount_ops(small_chunks, nursery)
    fh, ino = await create(writer, b"f")
    data = os.urandom(3 * CHUNK)  # full chunks: each is uploaded as soon as it fills
    await writer.write(fh, 0, data)
    with trio.fail_after(10):
        while (await reader.getattr(ino, CTX)).st_size < len(data):  # noqa: ASYNC110
            await trio.sleep(0.05)
    info = await reader.open(ino, os.O_RDONLY, CTX)
    assert await reader.read(info.fh, 0, len(data)) == data  # no flush, no close
    await writer.write(fh, len(data), b"tail")
    await writer.release(fh)


async def test_a_closed_file_is_not_kept_for_a_commit_its_close_made(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    """A commit is planned when a file's bytes are taken for one (`--commit-within`), and its
    close commits them: nothing is left for the planned commit, so the mount keeps nothing of
    the closed file for it. A run of small files would otherwise hold each one's bytes in
    memory for the whole delay."""
    writer = await mount_ops(small_chunks, nursery)
    fh, ino = await flushed(writer, b"f", os.urandom(3000))
    await writer.release(fh)
    gc.collect()
    assert [o for o in gc.get_objects() if isinstance(o, FileState) and o.ino == ino] == []


class SpawnedTasks(trio.abc.Instrument):
    """Notes the name of every task spawned while it is added."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def task_spawned(self, task: trio.lowlevel.Task) -> None:
        self.names.append(task.name)


async def test_bytes_that_travel_in_the_commit_need_no_upload_task(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    """A small file's close takes its bytes into the commit at once: a task would cost the
    close two passes of the scheduler. A chunk written as a block still uploads in one."""
    writer = await mount_ops(small_chunks, nursery)
    reader = await mount_ops(small_chunks, nursery)
    small, big = os.urandom(3000), os.urandom(2 * CHUNK + 10)
    spawned = SpawnedTasks()
    trio.lowlevel.add_instrument(spawned)
    try:
        small_fh, small_ino = await flushed(writer, b"small", small)
        big_fh, big_ino = await flushed(writer, b"big", big)
    finally:
        trio.lowlevel.remove_instrument(spawned)
    assert f"upload {small_ino}" not in spawned.names
    # Its first chunk travels in the commit too (`inline_max` is a chunk here); the second,
    # full, is uploaded as it fills, and the last at the flush.
    assert spawned.names.count(f"upload {big_ino}") == 2
    for fh in (small_fh, big_fh):
        await writer.release(fh)
    for ino, data in ((small_ino, small), (big_ino, big)):
        info = await reader.open(ino, os.O_RDONLY, CTX)
        assert await reader.read(info.fh, 0, len(data) + 1) == data
        await reader.release(info.fh)


async def test_a_read_within_a_cached_block_reaches_the_kernel_as_a_view_of_it(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    """pyfuse3 replies with any buffer: a sequential read hands it the cached block's bytes
    without copying them for each `READ`."""
    writer = await mount_ops(small_chunks, nursery)
    reader = await mount_ops(small_chunks, nursery)
    data = os.urandom(3 * CHUNK)
    fh, ino = await flushed(writer, b"f", data)
    await writer.release(fh)
    info = await reader.open(ino, os.O_RDONLY, CTX)
    # The first chunk travels in the metadata here; the second is a block.
    half = CHUNK // 2
    first, second = [await reader.read(info.fh, CHUNK + n * half, half) for n in range(2)]
    assert isinstance(first, memoryview)
    assert isinstance(second, memoryview)
    assert first.obj is second.obj
    assert bytes(first) + bytes(second) == data[CHUNK : 2 * CHUNK]
    # A read across chunks is joined into bytes of its own.
    assert await reader.read(info.fh, 2 * CHUNK - 10, 20) == data[2 * CHUNK - 10 : 2 * CHUNK + 10]
    await reader.release(info.fh)


async def test_reads_see_own_writes_before_close_and_others_after(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    writer = await mount_ops(small_chunks, nursery)
    reader = await mount_ops(small_chunks, nursery)
    fh, ino = await create(writer, b"f")
    data = os.urandom(5 * CHUNK + 123)
    for offset in range(0, len(data), 10_000):
        await writer.write(fh, offset, data[offset : offset + 10_000])
    assert await writer.read(fh, 0, len(data) + 10) == data
    assert (await writer.getattr(ino, CTX)).st_size == len(data)

    # Another client sees nothing of it until the writer flushes (close-to-open).
    info = await reader.open(ino, os.O_RDONLY, CTX)
    assert await reader.read(info.fh, 0, 100) == b""
    await reader.release(info.fh)

    await writer.flush(fh)
    await writer.release(fh)
    info = await reader.open(ino, os.O_RDONLY, CTX)
    assert await reader.read(info.fh, 0, len(data)) == data
    assert (await reader.getattr(ino, CTX)).st_size == len(data)
    await reader.release(info.fh)


async def test_overwrite_across_a_chunk_boundary_and_sparse_holes(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    ops = await mount_ops(small_chunks, nursery)
    fh, ino = await create(ops, b"sparse")
    expected = bytearray(3 * CHUNK)
    await ops.write(fh, 0, bytes(expected))
    await ops.flush(fh)
    patch = os.urandom(200)
    await ops.write(fh, CHUNK - 100, patch)
    expected[CHUNK - 100 : CHUNK + 100] = patch
    tail = b"tail"
    await ops.write(fh, 10 * CHUNK + 5, tail)  # a hole of whole chunks, then data
    expected += bytes(10 * CHUNK + 5 - len(expected)) + tail
    await ops.flush(fh)
    await ops.release(fh)

    info = await ops.open(ino, os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 0, len(expected) + 1) == bytes(expected)
    await ops.release(info.fh)


async def test_truncate_into_a_chunk_then_extend_reads_zeros(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    ops = await mount_ops(small_chunks, nursery)
    fh, ino = await create(ops, b"t")
    await ops.write(fh, 0, b"\xff" * (2 * CHUNK))
    await setattr_size(ops, ino, CHUNK + 10, fh)
    await setattr_size(ops, ino, 3 * CHUNK, fh)
    content = await ops.read(fh, 0, 4 * CHUNK)
    assert content == b"\xff" * (CHUNK + 10) + bytes(2 * CHUNK - 10)
    await ops.release(fh)


async def test_write_budget_bounds_buffers_under_random_writes(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    ops = await mount_ops(small_chunks, nursery, write_buffers=2)
    fh, ino = await create(ops, b"random")
    state = ops._open[ino]
    expected = bytearray(8 * CHUNK)
    size = 0
    rng = random.Random(7)
    for _ in range(60):
        offset = rng.randrange(0, len(expected) - 1000)
        piece = os.urandom(rng.randrange(1, 1000))
        await ops.write(fh, offset, piece)
        expected[offset : offset + len(piece)] = piece
        size = max(size, offset + len(piece))
        # Never more chunk buffers than the budget, however scattered the writes.
        assert len(state._dirty) + len(state._uploads) <= 2
    with trio.fail_after(30):  # evicting buffers to make room must never deadlock
        await ops.flush(fh)
    await ops.release(fh)
    info = await ops.open(ino, os.O_RDONLY, CTX)
    assert await ops.read(info.fh, 0, len(expected)) == bytes(expected[:size])
    await ops.release(info.fh)


def refuse_block_writes(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Every in-process node's disk refuses block writes with errno `name`."""

    def refuse(self: BlockStore, block_id: bytes, data: object, checksum: bytes) -> None:
        raise NodeError(name, "refused by the test")

    monkeypatch.setattr(BlockStore, "put", refuse)


async def test_flush_reports_the_error_when_no_replica_stores_the_block(
    nodes: LocalNodes,
    nursery: trio.Nursery,
    expected_logs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected_logs += ["not stored", "upload failed", "flush failed", "is lost"]
    ops = await mount_ops(nodes, nursery, inline_max=0)
    fh, ino = await create(ops, b"lost")
    refuse_block_writes(monkeypatch, "EIO")
    await ops.write(fh, 0, b"data")
    with pytest.raises(pyfuse3.FUSEError) as failure:
        await ops.flush(fh)
    assert failure.value.errno == errno.EIO
    await ops.release(fh)


async def assert_purged(ops: Operations, ino: int) -> None:
    """The background purge of `ino` goes through (within 10 s), and the inode is gone."""
    for _ in range(1000):
        if ino not in ops._orphans:
            break
        await trio.sleep(0.01)
    else:
        raise AssertionError(f"inode {ino} was not purged")
    with pytest.raises(pyfuse3.FUSEError) as gone:
        await ops.getattr(ino, CTX)
    assert gone.value.errno == errno.ENOENT


async def test_unlinked_open_file_is_purged_after_release(
    nodes: LocalNodes, nursery: trio.Nursery
) -> None:
    ops = await mount_ops(nodes, nursery)
    fh, ino = await flushed(ops, b"orphan", b"kept while open")
    await ops.unlink(ROOT, b"orphan", CTX)
    assert (await ops.getattr(ino, CTX)).st_nlink == 0
    assert await ops.read(fh, 0, 100) == b"kept while open"
    # Still there while open; purged (in the background) once the last handle is released.
    await trio.sleep(0.2)
    assert (await ops.getattr(ino, CTX)).st_nlink == 0
    await ops.release(fh)
    await assert_purged(ops, ino)


async def test_an_unlinked_file_that_is_not_open_is_purged_at_once(
    nodes: LocalNodes, nursery: trio.Nursery
) -> None:
    ops = await mount_ops(nodes, nursery)
    fh, ino = await create(ops, b"gone")
    await ops.release(fh)
    await ops.unlink(ROOT, b"gone", CTX)  # the kernel still holds a lookup: no matter
    await assert_purged(ops, ino)


async def test_orphans_removed_together_share_one_purge(
    nodes: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = await mount_ops(nodes, nursery)
    inos = []
    for n in range(20):
        fh, ino = await create(ops, b"f%d" % n)
        await ops.release(fh)
        inos.append(ino)
    purges: list[Purge] = []
    apply = ops.cluster.meta_command

    async def counting(command: Command, seq: int | None = None) -> Answer:
        if isinstance(command, Purge):
            purges.append(command)
        return await apply(command, seq)

    monkeypatch.setattr(ops.cluster, "meta_command", counting)
    for n in range(20):
        await ops.unlink(ROOT, b"f%d" % n, CTX)
    for ino in inos:
        await assert_purged(ops, ino)
    assert sorted(ino for purge in purges for ino in purge.inos) == sorted(inos)
    assert len(purges) < 5  # 20 unlinks well within the purge delay of each other


async def test_an_orphan_being_opened_again_waits_for_its_release(
    nodes: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    ops = await mount_ops(nodes, nursery)
    fh, ino = await create(ops, b"reopened")
    await ops.release(fh)
    read_chunks = ops.cluster.read_chunks

    async def slow_chunk_maps(ino: int, known: object = None) -> object:
        await trio.sleep(3 * PURGE_DELAY)  # the purge comes due meanwhile
        return await read_chunks(ino, known)

    monkeypatch.setattr(ops.cluster, "read_chunks", slow_chunk_maps)
    monkeypatch.setattr(ops.files.meta.cache, "watching", lambda ino: False)  # ask the leader
    await ops.unlink(ROOT, b"reopened", CTX)  # no handle: its purge is scheduled
    info = await ops.open(ino, os.O_RDWR, CTX)  # as through /proc/PID/fd, racing the purge
    await trio.sleep(2 * PURGE_DELAY)
    assert ino in ops._orphans
    await ops.write(info.fh, 0, b"still here")
    await ops.flush(info.fh)
    assert await ops.read(info.fh, 0, 100) == b"still here"
    await ops.release(info.fh)
    await assert_purged(ops, ino)


async def test_retried_command_is_applied_once(nodes: LocalNodes) -> None:
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    command = Mkdir(ROOT, b"once", 0o755, 0, 0, 0).to_wire()
    params = [await cluster._session(), 41, 41, command]
    first, changed, _ = await cluster._meta_call("meta.apply", params)
    again, unchanged, _ = await cluster._meta_call("meta.apply", params)
    assert first == again
    assert sorted(attr[0] for attr in changed) == [ROOT, first[0]]
    assert unchanged == []  # the retry changed nothing
    with pytest.raises(NodeError) as exists:
        await cluster._meta_call("meta.apply", [cluster.client_id, 42, 42, command])
    assert exists.value.name == "EEXIST"
    assert stat.S_ISDIR(first[1])


async def test_more_writers_than_buffers_do_not_deadlock(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    ops = await mount_ops(small_chunks, nursery, write_buffers=2)
    handles = [await create(ops, f"w{i}".encode()) for i in range(5)]

    async def write(fh: int, i: int) -> None:
        # Partial chunks: none fills up, so none starts uploading by itself.
        await ops.write(fh, 0, bytes([i]) * 100)
        await ops.write(fh, CHUNK + 7, bytes([i]) * 100)

    with trio.fail_after(30):
        async with trio.open_nursery() as writers:
            for i, (fh, _) in enumerate(handles):
                writers.start_soon(write, fh, i)
    for i, (fh, _) in enumerate(handles):
        await ops.flush(fh)
        expected = bytes([i]) * 100 + bytes(CHUNK + 7 - 100) + bytes([i]) * 100
        assert await ops.read(fh, 0, 2 * CHUNK) == expected
        await ops.release(fh)


async def test_a_failed_upload_is_kept_and_stored_by_a_later_flush(
    small_chunks: LocalNodes,
    nursery: trio.Nursery,
    expected_logs: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    expected_logs += ["not stored", "upload failed", "flush failed"]
    writer = await mount_ops(small_chunks, nursery, inline_max=0)
    reader = await mount_ops(small_chunks, nursery, inline_max=0)
    fh, ino = await create(writer, b"kept")
    refuse_block_writes(monkeypatch, "ENOSPC")
    data = os.urandom(CHUNK)
    await writer.write(fh, 0, data)  # a full chunk: its upload starts now, and fails
    # A chmod has nothing to do with the data: it neither flushes nor fails.
    mode: Any = SimpleNamespace(
        **{f"update_{name}": name == "mode" for name in
           ("mode", "uid", "gid", "size", "atime", "mtime", "ctime")}
    )  # fmt: skip
    attr = pyfuse3.EntryAttributes()
    attr.st_mode = stat.S_IFREG | 0o600
    await writer.setattr(ino, attr, mode, fh, CTX)
    with pytest.raises(pyfuse3.FUSEError) as failure:
        await writer.flush(fh)
    assert failure.value.errno == errno.ENOSPC  # what every disk said
    # The bytes were kept; once the disks take data again, the next flush stores them.
    monkeypatch.undo()
    await writer.flush(fh)
    await writer.release(fh)
    info = await reader.open(ino, os.O_RDONLY, CTX)
    assert await reader.read(info.fh, 0, CHUNK) == data
    await reader.release(info.fh)


async def test_flush_finishes_while_another_handle_keeps_appending(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    ops = await mount_ops(small_chunks, nursery)
    appender, ino = await create(ops, b"log")
    stop = trio.Event()

    async def append() -> None:
        offset = 0
        while not stop.is_set():
            await ops.write(appender, offset, b"x" * 10_000)
            offset += 10_000
            await trio.lowlevel.checkpoint()

    nursery.start_soon(append)
    for _ in range(20):
        with trio.fail_after(20):  # each flush waits for what was written before it only
            await ops.flush(appender)
    stop.set()


async def test_a_flush_never_commits_a_size_over_unstored_data(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    writer = await mount_ops(small_chunks, nursery)
    reader = await mount_ops(small_chunks, nursery)
    fh, ino = await create(writer, b"grow")
    await writer.write(fh, 0, b"a" * CHUNK)  # a full chunk, uploading now
    async with trio.open_nursery() as inner:
        inner.start_soon(writer.flush, fh)
        await trio.lowlevel.checkpoint()
        # Written while that flush waits: not its business, and never exposed as zeros.
        await writer.write(fh, CHUNK, b"b" * 1000)
    info = await reader.open(ino, os.O_RDONLY, CTX)
    content = await reader.read(info.fh, 0, 3 * CHUNK)
    assert content in (b"a" * CHUNK, b"a" * CHUNK + b"b" * 1000)
    await reader.release(info.fh)
    await writer.release(fh)


async def test_a_file_grown_by_another_client_is_not_shrunk_or_recommitted(
    small_chunks: LocalNodes, nursery: trio.Nursery
) -> None:
    mine = await mount_ops(small_chunks, nursery)
    theirs = await mount_ops(small_chunks, nursery)
    fh, ino = await flushed(mine, b"shared", b"1" * 10)
    info = await theirs.open(ino, os.O_WRONLY, CTX)
    await theirs.write(info.fh, 10, b"2" * 20)
    await theirs.release(info.fh)
    await mine.write(fh, 0, b"3")
    attr = await mine._open[ino].flush()
    assert attr.size == 30
    assert (await mine.getattr(ino, CTX)).st_size == 30
    assert not mine._open[ino].dirty
    await mine.release(fh)


async def heard(condition: Callable[[], bool]) -> None:
    """Wait (at most 5 s) for the change feed to bring what `condition` looks for."""
    with trio.fail_after(5):
        while not condition():  # noqa: ASYNC110 - the feed sets no event we could wait for
            await trio.sleep(0.005)


async def test_the_kernel_forgets_what_other_clients_change_and_not_its_own(
    nodes: LocalNodes, nursery: trio.Nursery
) -> None:
    mine = await mount_ops(nodes, nursery)
    theirs = await mount_ops(nodes, nursery)
    kernel, their_kernel = cast(KernelLog, mine.kernel), cast(KernelLog, theirs.kernel)
    fh, ino = await create(theirs, b"f")
    await theirs.release(fh)
    assert (await mine.lookup(ROOT, b"f", CTX)).st_ino == ino  # mine's kernel holds it now
    await setattr_mode(theirs, ino, 0o600)
    await heard(lambda: ino in kernel.attrs)
    assert (await mine.getattr(ino, CTX)).st_mode & 0o777 == 0o600
    await theirs.rename(ROOT, b"f", ROOT, b"g", 0, CTX)
    await heard(lambda: {(ROOT, b"f"), (ROOT, b"g")} <= set(kernel.entries))
    with pytest.raises(pyfuse3.FUSEError):
        await mine.lookup(ROOT, b"f", CTX)
    # Its own changes: the kernel saw them go by, and is told nothing.
    their_kernel.attrs.clear()
    told = len(kernel.attrs)
    await setattr_mode(theirs, ino, 0o640)
    await heard(lambda: len(kernel.attrs) > told)
    assert ino not in their_kernel.attrs
    assert (await theirs.getattr(ino, CTX)).st_mode & 0o777 == 0o640


def counted(ops: Operations) -> list[str]:
    """The metadata commands `ops` sends from now on, by name."""
    sent: list[str] = []
    apply = ops.files.meta.cluster.meta_command

    async def counting(command: Command, seq: int | None = None) -> Answer:
        sent.append(command.OP)
        return await apply(command, seq)

    ops.files.meta.cluster.meta_command = counting  # type: ignore[method-assign]
    return sent


STAMP = 1_600_000_000 * 10**9


async def test_times_set_on_a_file_with_unflushed_writes_ride_with_their_commit(
    nodes: LocalNodes, nursery: trio.Nursery
) -> None:
    """What `tar x` does for every file: write, futimens(fd), close: one metadata round for
    the data and the times, and the times are the ones asked for."""
    ops = await mount_ops(nodes, nursery)
    fh, ino = await create(ops, b"f")
    await ops.write(fh, 0, b"data")
    sent = counted(ops)
    times = _attributes(st_mtime_ns=STAMP)
    await ops.setattr(ino, times, _fields("mtime"), fh, CTX)
    assert (await ops.getattr(ino, CTX)).st_mtime_ns == STAMP  # shown at once
    await ops.release(fh)
    assert sent == ["commit_chunks"]
    attr = await ops.getattr(ino, CTX)
    assert (attr.st_mtime_ns, attr.st_size) == (STAMP, 4)
    # With nothing to commit, the times are set alone.
    await ops.setattr(ino, _attributes(st_mtime_ns=STAMP + 1), _fields("mtime"), None, CTX)
    assert sent == ["commit_chunks", "setattr"]
    assert (await ops.getattr(ino, CTX)).st_mtime_ns == STAMP + 1


async def test_a_deferred_time_of_the_epoch_shows_as_the_epoch(
    nodes: LocalNodes, nursery: trio.Nursery
) -> None:
    """`touch -d @0` of a file being written: 0 is a time, not "none given"."""
    ops = await mount_ops(nodes, nursery)
    fh, ino = await create(ops, b"f")
    await ops.write(fh, 0, b"data")
    epoch = _attributes(st_atime_ns=0, st_mtime_ns=0)
    both = _fields("atime", "mtime")
    await ops.setattr(ino, epoch, both, fh, CTX)
    shown = await ops.getattr(ino, CTX)
    assert (shown.st_atime_ns, shown.st_mtime_ns) == (0, 0)
    await ops.release(fh)
    committed = await ops.getattr(ino, CTX)
    assert (committed.st_atime_ns, committed.st_mtime_ns) == (0, 0)


async def test_what_cp_a_sets_rides_with_the_commit_and_another_mount_sees_it(
    nodes: LocalNodes, nursery: trio.Nursery
) -> None:
    """`cp -a`: create 0600, write, utimensat(fd), fchmod 0644, close: one metadata round
    after the create, and another mount opening the file then sees data, times and mode."""
    ops, other = await mount_ops(nodes, nursery), await mount_ops(nodes, nursery)
    fh, ino = await create(ops, b"f")
    await ops.write(fh, 0, b"copied")
    sent = counted(ops)
    await ops.setattr(ino, _attributes(st_mtime_ns=STAMP), _fields("mtime"), fh, CTX)
    await ops.setattr(ino, _attributes(st_mode=stat.S_IFREG | 0o644), _fields("mode"), None, CTX)
    assert stat.S_IMODE((await ops.getattr(ino, CTX)).st_mode) == 0o644
    await ops.release(fh)
    assert sent == ["commit_chunks"]
    theirs = int((await other.open(ino, os.O_RDONLY, CTX)).fh)
    attr = await other.getattr(ino, CTX)
    assert (stat.S_IMODE(attr.st_mode), attr.st_mtime_ns) == (0o644, STAMP)
    assert await other.read(theirs, 0, 100) == b"copied"
    await other.release(theirs)


async def test_what_tar_x_as_root_sets_rides_with_the_commit_but_a_new_owner_does_not(
    nodes: LocalNodes, nursery: trio.Nursery
) -> None:
    """`tar x` as root: write, utimensat, fchown to the owner it has, fchmod, close: one
    round. A chown to another owner is committed before it returns."""
    ops, other = await mount_ops(nodes, nursery), await mount_ops(nodes, nursery)
    fh, ino = await create(ops, b"f")
    await ops.write(fh, 0, b"unpacked")
    sent = counted(ops)
    owner = await ops.getattr(ino, CTX)
    await ops.setattr(ino, _attributes(st_mtime_ns=STAMP), _fields("mtime"), fh, CTX)
    same = _attributes(st_uid=owner.st_uid, st_gid=owner.st_gid)
    both = _fields("uid", "gid")
    await ops.setattr(ino, same, both, fh, CTX)
    await ops.setattr(ino, _attributes(st_mode=stat.S_IFREG | 0o644), _fields("mode"), None, CTX)
    await ops.release(fh)
    assert sent == ["commit_chunks"]
    fh = int((await ops.open(ino, os.O_WRONLY, CTX)).fh)
    await ops.write(fh, 0, b"again")
    await ops.setattr(ino, _attributes(st_uid=owner.st_uid + 1), _fields("uid"), None, CTX)
    assert sent == ["commit_chunks", "setattr"]
    assert (await other.getattr(ino, CTX)).st_uid == owner.st_uid + 1
    await ops.release(fh)


async def test_a_mode_that_takes_permissions_away_applies_at_once(
    nodes: LocalNodes, nursery: trio.Nursery
) -> None:
    ops, other = await mount_ops(nodes, nursery), await mount_ops(nodes, nursery)
    fh, ino = await create(ops, b"f")  # 0644
    await ops.write(fh, 0, b"secret")
    sent = counted(ops)
    await ops.setattr(ino, _attributes(st_mode=stat.S_IFREG | 0o640), _fields("mode"), None, CTX)
    assert sent == ["setattr"]
    # Committed when it returned: the leader has it (another mount's cache follows the feed).
    assert stat.S_IMODE((await other.files.meta.query(GetAttr(ino))).mode) == 0o640
    # After a deferred change, the deferred one is committed first: it cannot undo this one.
    await ops.setattr(ino, _attributes(st_mtime_ns=STAMP), _fields("mtime"), fh, CTX)
    await ops.setattr(ino, _attributes(st_mode=stat.S_IFREG | 0o600), _fields("mode"), None, CTX)
    assert sent == ["setattr", "commit_chunks", "setattr"]
    assert stat.S_IMODE((await other.files.meta.query(GetAttr(ino))).mode) == 0o600
    await ops.release(fh)
    attr = await other.getattr(ino, CTX)
    assert (stat.S_IMODE(attr.st_mode), attr.st_mtime_ns) == (0o600, STAMP)


async def test_a_write_after_utimensat_makes_mtime_the_writes_again(
    nodes: LocalNodes, nursery: trio.Nursery
) -> None:
    ops = await mount_ops(nodes, nursery)
    fh, ino = await create(ops, b"f")
    await ops.write(fh, 0, b"data")
    times = _attributes(st_atime_ns=STAMP, st_mtime_ns=STAMP)
    both = _fields("atime", "mtime")
    await ops.setattr(ino, times, both, fh, CTX)
    await ops.write(fh, 4, b"more")
    await ops.release(fh)
    attr = await ops.getattr(ino, CTX)
    assert attr.st_atime_ns == STAMP
    assert attr.st_mtime_ns > STAMP
