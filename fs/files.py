"""Open files: bounded write-back buffers, chunk uploads, and reads that see our own writes.

A file is a sequence of fixed-size chunks. While a file is open in this client, `FileState`
holds its chunk map (fetched at open: close-to-open consistency) and, per chunk being written,
a buffer of one chunk. A buffer that fills up is uploaded as a new immutable block at once,
while the application goes on writing; `flush` uploads the rest, waits for every upload, and
commits the new chunk map in one metadata command. Only then does close/fsync return.

Buffers are counted mount-wide by `WriteBudget`, so copying a file of any size holds at most
`limit` chunks in memory.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from dataclasses import dataclass, replace

import trio

from ringfs.fs.blockcache import BlockCache
from ringfs.fs.cluster import Cluster
from ringfs.node.commands import Attr, Chunk, CommitChunks
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.store import checksum as block_checksum

log = logging.getLogger(__name__)

BLOCK_ID_SIZE = 16


class _Buffer:
    """One chunk's bytes in memory; `end` is how many of them are meaningful."""

    __slots__ = ("data", "end")

    def __init__(self, data: bytearray, end: int) -> None:
        self.data = data
        self.end = end


class WriteBudget:
    """Caps the chunk buffers held by the whole mount (being filled, dirty, or uploading).

    A writer that finds no free slot waits for one. If no upload is running, no slot will
    free itself, so the least recently written dirty buffer is uploaded early to make room.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._uploads = 0
        self._dirty: OrderedDict[tuple[int, int], FileState] = OrderedDict()
        self._changed = trio.Event()

    async def acquire(self) -> None:
        """Take a slot, making room first if every slot sits in a dirty buffer."""
        while self._free == 0:
            if self._uploads == 0 and self._dirty:
                (_, idx), owner = next(iter(self._dirty.items()))
                owner.start_upload(idx)
            await self._changed.wait()
        self._free -= 1

    def release(self) -> None:
        self._free += 1
        self._notify()

    def touch(self, state: FileState, idx: int) -> None:
        """Note a write to a dirty buffer (recently written buffers are evicted last)."""
        key = (state.ino, idx)
        if key not in self._dirty:
            self._notify()  # a waiter may now have a dirty buffer to evict
        self._dirty[key] = state
        self._dirty.move_to_end(key)

    def upload_started(self, state: FileState, idx: int) -> None:
        self._dirty.pop((state.ino, idx), None)
        self._uploads += 1

    def upload_finished(self) -> None:
        self._uploads -= 1
        self.release()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


@dataclass(frozen=True)
class FileContext:
    """What every open file shares: the cluster, the caches, the task nursery."""

    cluster: Cluster
    cache: BlockCache
    budget: WriteBudget
    chunk_size: int
    nursery: trio.Nursery


class FileState:
    """One inode open in this client, shared by all of its handles."""

    def __init__(self, ctx: FileContext, attr: Attr, chunks: list[Chunk]) -> None:
        self.ctx = ctx
        self.ino = attr.ino
        self.attr = attr
        self.size = attr.size
        self.chunks: dict[int, Chunk] = {chunk.idx: chunk for chunk in chunks}
        self.open_count = 0
        self.modified_ns: int | None = None
        self._dirty: dict[int, _Buffer] = {}
        self._uploading: dict[int, _Buffer] = {}
        self._loading: dict[int, trio.Event] = {}
        self._upload_seq: dict[int, int] = {}
        self._to_commit: set[int] = set()
        self._uploads_active = 0
        self._uploads_idle = trio.Event()
        self._uploads_idle.set()
        self._failure: BaseException | None = None
        self._flush_lock = trio.Lock()

    @property
    def dirty(self) -> bool:
        """True while anything written is not yet committed."""
        return bool(
            self._dirty or self._uploading or self._to_commit or self.size != self.attr.size
        )

    def overlay(self, committed: Attr) -> Attr:
        """Attributes from the metadata with this client's unflushed size and mtime laid over."""
        if not self.dirty:
            return committed
        mtime = self.modified_ns or committed.mtime_ns
        return replace(
            committed, size=self.size, mtime_ns=mtime, ctime_ns=max(mtime, committed.ctime_ns)
        )

    def reset(self, attr: Attr, chunks: list[Chunk]) -> None:
        """Adopt a fresh committed view (after a truncate); only valid when nothing is dirty."""
        self.attr = attr
        self.size = attr.size
        self.chunks = {chunk.idx: chunk for chunk in chunks}

    # -- writing -----------------------------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> int:
        """Copy `data` into chunk buffers; full chunks start uploading at once."""
        chunk_size = self.ctx.chunk_size
        view = memoryview(data)
        position = offset
        while view:
            idx, within = divmod(position, chunk_size)
            count = min(len(view), chunk_size - within)
            buffer = await self._buffer(idx)
            buffer.data[within : within + count] = view[:count]
            buffer.end = max(buffer.end, within + count)
            position += count
            self.size = max(self.size, position)
            view = view[count:]
            if buffer.end == chunk_size and within + count == chunk_size:
                self.start_upload(idx)
        self.modified_ns = time.time_ns()
        return len(data)

    async def _buffer(self, idx: int) -> _Buffer:
        """The dirty buffer for chunk `idx`, created (with the chunk's current bytes) if need be."""
        while True:
            buffer = self._dirty.get(idx)
            if buffer is not None:
                self.ctx.budget.touch(self, idx)
                return buffer
            loading = self._loading.get(idx)
            if loading is not None:
                await loading.wait()
                continue
            self._loading[idx] = done = trio.Event()
            try:
                await self.ctx.budget.acquire()
                try:
                    buffer = await self._base(idx)
                except BaseException:
                    self.ctx.budget.release()
                    raise
                self._dirty[idx] = buffer
                self.ctx.budget.touch(self, idx)
            finally:
                del self._loading[idx]
                done.set()

    async def _base(self, idx: int) -> _Buffer:
        chunk_size = self.ctx.chunk_size
        uploading = self._uploading.get(idx)
        if uploading is not None:
            return _Buffer(bytearray(uploading.data), uploading.end)
        data = bytearray(chunk_size)
        chunk = self.chunks.get(idx)
        if chunk is None:
            return _Buffer(data, 0)
        stored = await self.ctx.cache.get(chunk.block_id, chunk.checksum)
        length = min(chunk.length, len(stored))
        data[:length] = stored[:length]
        return _Buffer(data, length)

    def start_upload(self, idx: int) -> None:
        """Move chunk `idx` from dirty to uploading and upload it in the background."""
        buffer = self._dirty.pop(idx)
        self.ctx.budget.upload_started(self, idx)
        seq = self._upload_seq.get(idx, 0) + 1
        self._upload_seq[idx] = seq
        self._uploading[idx] = buffer
        self._uploads_active += 1
        self._uploads_idle = trio.Event()
        self.ctx.nursery.start_soon(self._upload, idx, buffer, seq, name=f"upload {self.ino}")

    async def _upload(self, idx: int, buffer: _Buffer, seq: int) -> None:
        try:
            view = memoryview(buffer.data)[: buffer.end]
            block_id = os.urandom(BLOCK_ID_SIZE)
            digest = await trio.to_thread.run_sync(block_checksum, view)
            await self.ctx.cluster.put_block(block_id, view, digest)
            if self._upload_seq[idx] == seq:
                self.chunks[idx] = Chunk(idx, block_id, buffer.end, digest)
                self._to_commit.add(idx)
        except (Unavailable, NodeError) as exc:
            log.error("inode %d chunk %d: upload failed: %s", self.ino, idx, exc)
            self._failure = exc
        finally:
            if self._uploading.get(idx) is buffer:
                del self._uploading[idx]
            self.ctx.budget.upload_finished()
            self._uploads_active -= 1
            if self._uploads_active == 0:
                self._uploads_idle.set()

    async def flush(self) -> Attr:
        """Upload everything written, then commit the chunk map; returns the committed attrs.

        Raises the upload failure (`Unavailable`/`NodeError`) if any chunk could not reach a
        write quorum since the last flush; that data is lost and the error is reported once.
        """
        async with self._flush_lock:
            for idx in sorted(self._dirty):
                self.start_upload(idx)
            while self._uploads_active:
                await self._uploads_idle.wait()
            if self._failure is not None:
                failure, self._failure = self._failure, None
                raise failure
            if not self._to_commit and self.size == self.attr.size:
                return self.attr
            committing = sorted(self._to_commit)
            self._to_commit.clear()
            command = CommitChunks(
                self.ino, tuple(self.chunks[i] for i in committing), self.size, 0
            )
            try:
                self.attr = await self.ctx.cluster.meta_apply(command)
            except BaseException:
                self._to_commit.update(committing)
                raise
            return self.attr

    # -- reading -----------------------------------------------------------------------------

    async def read(self, offset: int, size: int) -> bytes:
        """Bytes at `offset`, seeing this client's own unflushed writes; holes read as zeros."""
        chunk_size = self.ctx.chunk_size
        end = min(offset + size, self.size)
        parts: list[bytes] = []
        position = offset
        while position < end:
            idx, within = divmod(position, chunk_size)
            count = min(end - position, chunk_size - within)
            parts.append(await self._read_chunk(idx, within, count))
            position += count
        return b"".join(parts)

    async def _read_chunk(self, idx: int, within: int, count: int) -> bytes:
        buffer = self._dirty.get(idx) or self._uploading.get(idx)
        if buffer is not None:
            return bytes(buffer.data[within : within + count])
        chunk = self.chunks.get(idx)
        if chunk is None:
            return bytes(count)
        data = await self.ctx.cache.get(chunk.block_id, chunk.checksum)
        following = self.chunks.get(idx + 1)
        if following is not None:
            self.ctx.cache.prefetch(following.block_id, following.checksum)
        piece = data[within : min(within + count, chunk.length)]
        if len(piece) < count:
            return piece + bytes(count - len(piece))
        return piece
