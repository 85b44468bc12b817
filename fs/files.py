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

import contextlib
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace

import trio

from ringfs.fs.blockcache import BlockCache
from ringfs.fs.cluster import Cluster
from ringfs.node.blocks.store import checksum as block_checksum
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.meta.commands import Attr, Chunk, CommitChunks

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
        """Take a slot, making room first if every slot sits in a dirty buffer.

        Raises the upload failure if the buffer uploaded to make room could not be stored
        (the cluster cannot take data now; waiting would hang the writer).
        """
        while self._free == 0:
            if self._uploads == 0 and self._dirty:
                (_, idx), owner = next(iter(self._dirty.items()))
                owner.start_upload(idx)
                while owner.is_uploading(idx):
                    await self._changed.wait()
                if idx in owner.failed:
                    raise owner.failed[idx]
                continue
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

    def upload_failed(self, state: FileState, idx: int) -> None:
        """The upload's buffer went back to dirty: it keeps its slot."""
        self._uploads -= 1
        self.touch(state, idx)
        self._notify()

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


class _Upload:
    """One chunk buffer on its way to the replicas."""

    __slots__ = ("idx", "seq", "buffer", "done")

    def __init__(self, idx: int, seq: int, buffer: _Buffer) -> None:
        self.idx = idx
        self.seq = seq
        self.buffer = buffer
        self.done = trio.Event()


class FileState:
    """One inode open in this client, shared by all of its handles.

    Every chunk being written is in exactly one place: `_dirty` (taking writes), `_uploads`
    (its newest upload in flight; older uploads of the same chunk may still run, their
    results are ignored), or `chunks` (stored, listed in `_to_commit` until committed). A
    failed upload puts its buffer back in `_dirty` and notes the failure: nothing written is
    dropped, and the next flush tries again and reports the failure if it persists.
    """

    def __init__(self, ctx: FileContext, attr: Attr, chunks: list[Chunk]) -> None:
        self.ctx = ctx
        self.ino = attr.ino
        self.attr = attr
        self.size = attr.size
        self.chunks: dict[int, Chunk] = {chunk.idx: chunk for chunk in chunks}
        self.open_count = 0
        self.modified_ns: int | None = None
        self._dirty: dict[int, _Buffer] = {}
        self._uploads: dict[int, _Upload] = {}
        self._loading: dict[int, trio.Event] = {}
        self._seq = itertools.count(1)
        self._newest: dict[int, int] = {}
        self._to_commit: set[int] = set()
        self.failed: dict[int, BaseException] = {}
        self._flush_lock = trio.Lock()
        self._write_lock = trio.Lock()

    @property
    def dirty(self) -> bool:
        """True while anything written is not yet committed."""
        return bool(self._dirty or self._uploads or self._to_commit or self.size > self.attr.size)

    def overlay(self, committed: Attr) -> Attr:
        """Attributes from the metadata with this client's unflushed size and mtime laid over."""
        if not self.dirty:
            return committed
        mtime = self.modified_ns or committed.mtime_ns
        return replace(
            committed,
            size=max(self.size, committed.size),
            mtime_ns=mtime,
            ctime_ns=max(mtime, committed.ctime_ns),
        )

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold writes off (for a truncation: flush, change the size, `reset`)."""
        async with self._write_lock:
            yield

    def reset(self, attr: Attr, chunks: list[Chunk]) -> None:
        """Adopt a fresh committed view after a truncation, inside `exclusive` after a flush."""
        if self._dirty or self._uploads or self._to_commit:
            raise RuntimeError("reset of a file with uncommitted writes")
        self.attr = attr
        self.size = attr.size
        self.chunks = {chunk.idx: chunk for chunk in chunks}

    # -- writing -----------------------------------------------------------------------------

    async def write(self, offset: int, data: bytes) -> int:
        """Copy `data` into chunk buffers; full chunks start uploading at once."""
        chunk_size = self.ctx.chunk_size
        view = memoryview(data)
        position = offset
        async with self._write_lock:
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
        upload = self._uploads.get(idx)
        if upload is not None:
            return _Buffer(bytearray(upload.buffer.data), upload.buffer.end)
        data = bytearray(chunk_size)
        chunk = self.chunks.get(idx)
        if chunk is None:
            return _Buffer(data, 0)
        stored = await self.ctx.cache.get(chunk.block_id, chunk.checksum)
        length = min(chunk.length, len(stored))
        data[:length] = stored[:length]
        return _Buffer(data, length)

    def is_uploading(self, idx: int) -> bool:
        return idx in self._uploads

    def start_upload(self, idx: int) -> None:
        """Move chunk `idx` from dirty to uploading and upload it in the background."""
        buffer = self._dirty.pop(idx)
        self.ctx.budget.upload_started(self, idx)
        upload = self._uploads[idx] = _Upload(idx, next(self._seq), buffer)
        self._newest[idx] = upload.seq
        self.ctx.nursery.start_soon(self._upload, upload, name=f"upload {self.ino}")

    async def _upload(self, upload: _Upload) -> None:
        idx, buffer = upload.idx, upload.buffer
        kept = False
        try:
            view = memoryview(buffer.data)[: buffer.end]
            block_id = os.urandom(BLOCK_ID_SIZE)
            digest = await trio.to_thread.run_sync(block_checksum, view)
            await self.ctx.cluster.put_block(block_id, view, digest)
            if self._newest[idx] == upload.seq:
                self.chunks[idx] = Chunk(idx, block_id, buffer.end, digest)
                self._to_commit.add(idx)
                self.failed.pop(idx, None)
                if buffer.end < self.ctx.chunk_size:
                    # A partial chunk is likely written again: spare that write a read-back.
                    self.ctx.cache.insert(block_id, bytes(view))
        except (Unavailable, NodeError) as exc:
            log.error("inode %d chunk %d: upload failed: %s", self.ino, idx, exc)
            if self._newest[idx] == upload.seq and idx not in self._dirty:
                # Keep the bytes: the next flush tries again, and reports this if it persists.
                self._dirty[idx] = buffer
                self.failed[idx] = exc
                kept = True
        finally:
            if self._uploads.get(idx) is upload:
                del self._uploads[idx]
            if kept:
                self.ctx.budget.upload_failed(self, idx)
            else:
                self.ctx.budget.upload_finished()
            upload.done.set()

    async def flush(self) -> Attr:
        """Store everything written so far, then commit the chunk map; returns the new attrs.

        Waits only for the chunks written before the call (and their rewrites), not for
        writes that go on meanwhile. Raises the upload failure (`Unavailable`/`NodeError`)
        if a chunk written before the call could not reach a write quorum; its bytes stay
        buffered for the next flush.
        """
        async with self._flush_lock:
            size = self.size
            pending = set(self._dirty) | set(self._uploads)
            for idx in sorted(self._dirty):
                self.start_upload(idx)
            await self._settle(pending)
            for idx in sorted(pending):
                if idx in self.failed:
                    raise self.failed[idx]
            return await self._commit(size)

    async def _settle(self, indexes: set[int]) -> None:
        """Wait until the newest bytes of each chunk in `indexes` are stored or have failed."""
        for idx in sorted(indexes):
            while True:
                upload = self._uploads.get(idx)
                if upload is not None:
                    await upload.done.wait()
                elif idx in self._dirty and idx not in self.failed:
                    self.start_upload(idx)  # written again since: upload the newer bytes
                else:
                    break

    async def _commit(self, size: int) -> Attr:
        """Commit every stored chunk and a size covering them (never a size over unstored data)."""
        committing = sorted(self._to_commit)
        if not committing and size <= self.attr.size:
            return self.attr
        chunk_size = self.ctx.chunk_size
        chunks = tuple(self.chunks[i] for i in committing)
        size = max([size, *(c.idx * chunk_size + c.length for c in chunks)])
        self._to_commit.difference_update(committing)
        try:
            self.attr = await self.ctx.cluster.meta_apply(CommitChunks(self.ino, chunks, size, 0))
        except BaseException:
            self._to_commit.update(committing)
            raise
        # Another client may have made the file longer than we knew.
        self.size = max(self.size, self.attr.size)
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
        buffer = self._dirty.get(idx)
        if buffer is None and idx in self._uploads:
            buffer = self._uploads[idx].buffer
        if buffer is not None:
            return bytes(memoryview(buffer.data)[within : within + count])
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
