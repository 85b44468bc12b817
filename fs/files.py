"""Open files: bounded write-back buffers, chunk uploads, commits that never overwrite what
another mount committed, and reads that see our own writes.

A file is a sequence of fixed-size chunks. While a file is open in this client, `FileState`
holds its chunk map (current at every open: close-to-open consistency) and, per chunk being
written, a buffer of one chunk built on the committed chunk. A buffer that fills up is uploaded
as a new immutable block at once, while the application goes on writing; `flush` uploads the
rest, waits for every upload, and commits the new chunks. Only then does close/fsync return.

The commit is a compare-and-set: each chunk names the committed chunk it was built on, and
appended bytes the size they were placed after. If another mount committed first, the commit
fails with CHANGED, changing nothing; the file is read again, this mount's own writes (kept in a
`WriteLog` per chunk) are laid over it, appends moving to the new end, and the commit is tried
again. So writes of several mounts to different bytes are all kept, overlapping ones end as some
order of whole flushes, and a truncation is never undone by a stale flush.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, replace

import trio

from ringfs.fs.blockcache import BlockCache
from ringfs.fs.budget import WriteBudget
from ringfs.fs.chunkmaps import KnownMap
from ringfs.fs.cluster import Cluster
from ringfs.fs.later import Later
from ringfs.fs.metadata import Metadata
from ringfs.fs.writelog import Piece, WriteLog, by_chunk, intersect, merge, rebase
from ringfs.node.checksum import checksum as block_checksum
from ringfs.node.errors import CHANGED, NodeError, Unavailable
from ringfs.node.meta import commands
from ringfs.node.meta.commands import (
    INLINE_MAX,
    TAIL_MAX,
    Attr,
    Chunk,
    ChunkUpdate,
    CommitChunks,
    Setattr,
)

log = logging.getLogger(__name__)

BLOCK_ID_SIZE = 16
# Chunks fetched ahead of a sequential read: the next blocks sit on other nodes, which serve
# them in parallel (a cold sequential read went from about 450 to 650 MiB/s going from 1 to 5).
READAHEAD_CHUNKS = 5


@dataclass(frozen=True)
class AttrUpdate:
    """What a commit sets explicitly besides the data (utimensat, chmod); None: atime and
    mode stay, mtime becomes now."""

    atime_ns: int | None = None
    mtime_ns: int | None = None
    mode: int | None = None

    def then(self, later: AttrUpdate) -> AttrUpdate:
        """This update followed by `later`: what `later` sets wins."""
        return AttrUpdate(
            self.atime_ns if later.atime_ns is None else later.atime_ns,
            self.mtime_ns if later.mtime_ns is None else later.mtime_ns,
            self.mode if later.mode is None else later.mode,
        )


class _Buffer:
    """One chunk's bytes in memory; `end` is how many of them are meaningful. The bytes grow as
    writes reach further (a 4 KiB file does not zero a 4 MiB chunk); past them, zeros."""

    __slots__ = ("data", "end", "_limit")

    def __init__(self, data: bytearray, end: int, limit: int) -> None:
        self.data = data
        self.end = end
        self._limit = limit

    def write(self, within: int, piece: memoryview) -> None:
        need = within + len(piece)
        if need > len(self.data):
            grown = min(self._limit, max(need, 2 * len(self.data)))
            self.data.extend(bytes(grown - len(self.data)))
        self.data[within:need] = piece
        self.end = max(self.end, need)

    def read(self, within: int, count: int) -> bytes:
        piece = bytes(memoryview(self.data)[within : within + count])
        return piece + bytes(count - len(piece)) if len(piece) < count else piece

    def copy(self) -> _Buffer:
        return _Buffer(bytearray(self.data), self.end, self._limit)


@dataclass(frozen=True)
class FileContext:
    """What every open file shares: the cluster, the caches, the task nursery."""

    cluster: Cluster
    meta: Metadata
    cache: BlockCache
    budget: WriteBudget
    chunk_size: int
    nursery: trio.Nursery
    #: Commits of what files uploaded, planned `MountConfig.commit_within` on (`_plan_commit`).
    commits: Later
    #: A first chunk up to this size travels in the commit instead of to the storage nodes.
    inline_max: int = INLINE_MAX


class _Upload:
    """One chunk buffer on its way to the replicas; it holds the writes up to `upto`."""

    __slots__ = ("idx", "seq", "upto", "buffer", "done")

    def __init__(self, idx: int, seq: int, upto: int, buffer: _Buffer) -> None:
        self.idx = idx
        self.seq = seq
        self.upto = upto
        self.buffer = buffer
        self.done = trio.Event()


class FileState:
    """One inode open in this client, shared by all of its handles.

    Every chunk being written is in exactly one place: `_dirty` (taking writes), `_uploads`
    (its newest upload in flight; older uploads of the same chunk may still run, their results
    are ignored), or `chunks` (stored, listed in `_to_commit` until committed). A chunk with any
    of those has a `_bases` entry, the committed chunk they were built on, and a `_logs` entry,
    the writes made since. A failed upload puts its buffer back in `_dirty` and notes the
    failure: nothing written is dropped, and the next flush tries again and reports the failure
    if it persists.
    """

    def __init__(self, ctx: FileContext, attr: Attr, chunks: list[Chunk]) -> None:
        self.ctx = ctx
        self.ino = attr.ino
        self.attr = attr
        self.size = attr.size
        self.chunks: dict[int, Chunk] = {chunk.idx: chunk for chunk in chunks}
        self.open_count = 0
        #: Last releases still flushing: the state stays while one does.
        self.closing = 0
        self.modified_ns: int | None = None
        #: chmod and utimensat made while writes were unflushed: the next commit sets them.
        self.deferred = AttrUpdate()
        #: Set when a commit showed that another client changed the file since this one read
        #: it: the kernel's cached pages of the file may be stale.
        self.cache_stale = False
        self._dirty: dict[int, _Buffer] = {}
        self._uploads: dict[int, _Upload] = {}
        self._loading: dict[int, trio.Event] = {}
        self._upload_seq = 0
        self._newest: dict[int, int] = {}
        self._bases: dict[int, Chunk | None] = {}
        self._logs: dict[int, WriteLog] = {}
        # Per chunk, the last write its newest upload holds: writes after it start new ranges.
        self._sealed: dict[int, int] = {}
        self._write_seq = 0
        # Stored chunks to commit, with the last write each holds.
        self._to_commit: dict[int, int] = {}
        # Runs of bytes appended (O_APPEND) and not committed yet, in the order written, placed
        # after a committed size of `_append_base`: their commit holds only at that size.
        self._appended: list[tuple[int, int]] = []
        self._append_base = 0
        self._discarded = False
        self.failed: dict[int, BaseException] = {}
        # Where the last read ended: a read starting near it goes on sequentially.
        self._read_end = 0
        self._flush_lock = trio.Lock()
        self._write_lock = trio.Lock()

    @property
    def dirty(self) -> bool:
        """True while anything written, or any deferred change, is not yet committed."""
        return self._unflushed_writes or self.deferred_changes

    @property
    def _unflushed_writes(self) -> bool:
        stored = self._dirty or self._uploads or self._to_commit or self.size > self.attr.size
        return bool(stored)

    @property
    def deferred_changes(self) -> bool:
        return self.deferred != AttrUpdate()

    def overlay(self, committed: Attr) -> Attr:
        """Attributes from the metadata with this client's unflushed size, times and mode laid
        over."""
        if not self.dirty:
            return committed
        deferred = self.deferred
        written = self.modified_ns if self._unflushed_writes else None
        mtime = _first(deferred.mtime_ns, written, committed.mtime_ns)
        mode = committed.mode
        if deferred.mode is not None:
            mode = stat.S_IFMT(mode) | stat.S_IMODE(deferred.mode)
        return replace(
            committed,
            mode=mode,
            size=max(self.size, committed.size),
            atime_ns=_first(deferred.atime_ns, committed.atime_ns),
            mtime_ns=mtime,
            ctime_ns=max(mtime, written or 0, committed.ctime_ns),
        )

    def defer(self, update: AttrUpdate) -> Attr:
        """Set times and mode with the commit of the unflushed writes (at flush, fsync or the
        last close): one metadata round for them all, where `cp -a` asks for three (write,
        utimensat, chmod, close). Returns the attributes as this client now shows them."""
        self.deferred = self.deferred.then(update)
        return self.overlay(self.attr)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold flushes and writes off (for a truncation: flush, change the size, `truncated`).

        The locks are always taken in one order, flush then write, here and in `flush`.
        """
        async with _held(self._flush_lock), _held(self._write_lock):
            yield

    def truncated(self, attr: Attr) -> None:
        """Adopt a size change this client made, inside `exclusive` after a flush: chunks past
        the new end go and the last one shortens, as the metadata did."""
        if self._dirty or self._uploads or self._to_commit:
            raise RuntimeError("truncation of a file with uncommitted writes")
        chunk_size = self.ctx.chunk_size
        self.chunks = {
            idx: chunk.cut(attr.size - idx * chunk_size)
            for idx, chunk in self.chunks.items()
            if idx * chunk_size < attr.size
        }
        self._bases.clear()
        self._logs.clear()
        self._sealed.clear()
        self._appended.clear()
        self.attr = attr
        self.size = attr.size

    def refresh(self, attr: Attr, chunks: list[Chunk]) -> None:
        """Adopt the committed file as another open (close-to-open) or a failed read found it.

        Chunks this client is writing keep their local versions: their commit is checked
        against the chunks they were built on. A view older than this client's is ignored (its
        answer was overtaken by a commit of this client's).
        """
        if attr.version < self.attr.version:
            return
        fresh = {chunk.idx: chunk for chunk in chunks}
        for idx in set(self.chunks) | set(fresh):
            if idx in self._bases:
                continue
            if idx in fresh:
                self.chunks[idx] = fresh[idx]
            else:
                del self.chunks[idx]
        self.attr = attr
        self.size = self._local_size()

    def committed_map(self) -> KnownMap | None:
        """The file's version and its chunk map, as this client committed or read them last,
        if it holds nothing else: no writes since, and no commit that showed another client's
        changes since (`cache_stale`)."""
        if self._logs or self._bases or self._dirty or self._uploads or self._to_commit:
            return None
        if self.cache_stale or self._discarded:
            return None
        return self.attr.version, [self.chunks[idx] for idx in sorted(self.chunks)]

    def _local_size(self) -> int:
        """The committed size, or the end of what this client wrote since, if further."""
        return max([self.attr.size] + [end for _, end in self.uncommitted()])

    def uncommitted(self) -> list[tuple[int, int]]:
        """The byte ranges written here and not committed yet, sorted and disjoint."""
        chunk_size = self.ctx.chunk_size
        return merge(
            (idx * chunk_size + start, idx * chunk_size + end)
            for idx, log in self._logs.items()
            for start, end in log.spans()
        )

    def discard(self) -> None:
        """Give up the bytes that could not be stored: the last handle is gone. Their buffers
        go back to the mount's write budget (uploads still running release theirs)."""
        self._discarded = True
        for idx in list(self._dirty):
            del self._dirty[idx]
            self.ctx.budget.drop(self, idx)

    # -- writing -----------------------------------------------------------------------------

    async def write(self, offset: int, data: bytes, append: bool = False) -> int:
        """Copy `data` into chunk buffers; full chunks start uploading at once.

        `append` (an O_APPEND handle): the bytes go to this client's end of the file, whatever
        `offset` the kernel computed, and move to the file's end at commit if it changed.
        """
        chunk_size = self.ctx.chunk_size
        view = memoryview(data)
        async with self._write_lock:
            if append:
                offset = self.size
                self._note_append(offset, offset + len(data))
            self._write_seq += 1
            position = offset
            while view:
                idx, within = divmod(position, chunk_size)
                count = min(len(view), chunk_size - within)
                buffer = await self._buffer(idx)
                buffer.write(within, view[:count])
                sealed = self._sealed.get(idx, 0)
                self._logs[idx].add(self._write_seq, within, within + count, sealed)
                position += count
                self.size = max(self.size, position)
                view = view[count:]
                if buffer.end == chunk_size and within + count == chunk_size:
                    self.start_upload(idx)
            self.modified_ns = time.time_ns()
            if self.deferred.mtime_ns is not None:
                # A write after utimensat makes mtime the write's time again.
                self.deferred = replace(self.deferred, mtime_ns=None)
        return len(data)

    def _note_append(self, start: int, end: int) -> None:
        if not self._appended:
            self._append_base = self.attr.size
        if self._appended and self._appended[-1][1] == start:
            self._appended[-1] = (self._appended[-1][0], end)
        else:
            self._appended.append((start, end))

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
                await self._new_buffer(idx)
            finally:
                del self._loading[idx]
                done.set()

    async def _new_buffer(self, idx: int) -> None:
        """Make chunk `idx`'s dirty buffer: a copy of its newest upload in flight, or of the
        chunk as this client knows it (its base), or zeros."""
        await self.ctx.budget.acquire()
        source = self.chunks.get(idx)  # what the bytes come from, whatever a refresh does
        try:
            upload = self._uploads.get(idx)
            if upload is not None:
                buffer = upload.buffer.copy()
            else:
                buffer = await self._stored_buffer(source)
        except BaseException:
            self.ctx.budget.release()
            raise
        if idx in self._dirty:
            # A failed upload put its buffer back meanwhile: that one holds the chunk's bytes.
            self.ctx.budget.release()
            return
        if idx not in self._bases:
            self._bases[idx] = source
            self._logs[idx] = WriteLog()
        self._dirty[idx] = buffer
        self.ctx.budget.touch(self, idx)

    async def _stored_buffer(self, chunk: Chunk | None) -> _Buffer:
        if chunk is None:
            return _Buffer(bytearray(), 0, self.ctx.chunk_size)
        # Room for appends past it, up to a tail: growing a buffer copies it.
        contents = await self._contents(chunk, room=TAIL_MAX)
        return _Buffer(contents, chunk.length, self.ctx.chunk_size)

    def is_uploading(self, idx: int) -> bool:
        return idx in self._uploads

    def start_upload(self, idx: int) -> None:
        """Move chunk `idx` from dirty to uploading and upload it in the background; bytes
        that travel in the commit (`_kept_in_commit`) are done at once, without a task."""
        buffer = self._dirty.pop(idx)
        self.ctx.budget.upload_started(self, idx)
        self._upload_seq += 1
        upload = _Upload(idx, self._upload_seq, self._write_seq, buffer)
        self._uploads[idx] = upload
        self._newest[idx] = upload.seq
        self._sealed[idx] = upload.upto
        view = memoryview(buffer.data)[: buffer.end]
        extends = self._extended(idx, upload.upto)
        chunk = self._kept_in_commit(idx, view, extends)
        if chunk is None:
            name = f"upload {self.ino}"
            self.ctx.nursery.start_soon(self._upload, upload, view, extends, name=name)
        else:
            self._uploaded(upload, chunk)
            self._upload_ended(upload, kept=False)

    async def _upload(self, upload: _Upload, view: memoryview, extends: Chunk | None) -> None:
        idx = upload.idx
        kept = False
        try:
            self._uploaded(upload, await self._store(idx, view, extends))
        except (Unavailable, NodeError) as exc:
            log.error("inode %d chunk %d: upload failed: %s", self.ino, idx, exc)
            newest = self._newest[idx] == upload.seq and idx not in self._dirty
            if newest and not self._discarded:
                # Keep the bytes: the next flush tries again, and reports this if it persists.
                self._dirty[idx] = upload.buffer
                self.failed[idx] = exc
                kept = True
        finally:
            self._upload_ended(upload, kept)

    def _uploaded(self, upload: _Upload, chunk: Chunk) -> None:
        """The upload's bytes are stored: the next commit takes them, unless a newer upload
        of the chunk started meanwhile."""
        if self._newest[upload.idx] == upload.seq:
            self.chunks[upload.idx] = chunk
            self._to_commit[upload.idx] = upload.upto
            self.failed.pop(upload.idx, None)
            self._plan_commit()

    def _upload_ended(self, upload: _Upload, kept: bool) -> None:
        """Stored, or failed with the bytes `kept` dirty: the buffer's slot and its waiters
        learn it."""
        if self._uploads.get(upload.idx) is upload:
            del self._uploads[upload.idx]
        if kept:
            self.ctx.budget.upload_failed(self, upload.idx)
        else:
            self.ctx.budget.upload_finished()
        upload.done.set()

    def _extended(self, idx: int, through: int) -> Chunk | None:
        """The chunk the writes to chunk `idx` (up to write `through`) were built on, if they
        all fall past its stored bytes (see `_extendable`)."""
        base = self._bases.get(idx)
        spans = self._logs[idx].spans(through) if base is not None else []
        return _extendable(base, (start for start, _ in spans))

    async def _store(self, idx: int, view: memoryview, extends: Chunk | None = None) -> Chunk:
        """Write one chunk's bytes as a new block on its replicas; a small first chunk instead
        travels in the commit, and the metadata keeps it (`Chunk.data`).

        `extends`: a stored chunk whose stored bytes `view` starts with. If no more than
        `TAIL_MAX` bytes follow them and the chunk is not full, those alone travel in the
        commit, as its tail (an append and fsync does not write the chunk again).
        """
        kept = self._kept_in_commit(idx, view, extends)
        if kept is not None:
            return kept
        block_id = os.urandom(BLOCK_ID_SIZE)
        digest = block_checksum(view)
        await self.ctx.cluster.put_block(block_id, view, digest)
        if len(view) < self.ctx.chunk_size:
            # A partial chunk is likely written again: spare that write a read-back.
            self.ctx.cache.insert(block_id, bytes(view))
        return Chunk(idx, block_id, len(view), digest)

    def _kept_in_commit(self, idx: int, view: memoryview, extends: Chunk | None) -> Chunk | None:
        """The chunk, if its bytes need no block write: a tail of `extends`, or a small
        first chunk (see `_store`)."""
        if extends is not None and _tail_fits(extends, len(view), self.ctx.chunk_size):
            return replace(extends, length=len(view), tail=bytes(view[extends.stored_length :]))
        if idx == 0 and 0 < len(view) <= self.ctx.inline_max:
            block_id = os.urandom(BLOCK_ID_SIZE)
            return Chunk(idx, block_id, len(view), block_checksum(view), bytes(view))
        return None

    def _plan_commit(self) -> None:
        """See that what was just uploaded is committed within `--commit-within` seconds."""
        if not self._discarded:
            self.ctx.commits.plan(self, self._commit_uploaded, name=f"commit {self.ino}")

    async def _commit_uploaded(self) -> None:
        """Commit uploaded chunks that no flush committed meanwhile, as `fsync` would.

        Storage nodes give up the blocks no file references after a while (`--orphan-age`):
        without this, a file written for longer than that before its first close or fsync
        would lose the blocks it uploaded first. A failure is logged; the next flush meets
        it again.
        """
        if self._discarded or not self._to_commit:
            return
        try:
            await self.flush()
        except (Unavailable, NodeError) as exc:
            log.warning("inode %d: committing uploaded chunks failed: %s", self.ino, exc)

    # -- flushing ----------------------------------------------------------------------------

    async def flush(self) -> Attr:
        """Store everything written so far, then commit it with the deferred times and mode;
        returns the new attributes.

        Waits only for the chunks written before the call (and their rewrites), not for
        writes that go on meanwhile. Raises the upload failure (`Unavailable`/`NodeError`)
        if a chunk written before the call could not reach a write quorum; its bytes stay
        buffered for the next flush.
        """
        async with _held(self._flush_lock):
            await self._store_all(self._write_seq)
            while True:
                try:
                    deferred = self.deferred
                    if not await self._commit(deferred) and deferred != AttrUpdate():
                        await self._set(deferred)  # nothing stored was left to carry it
                    if self.deferred == deferred:
                        self.deferred = AttrUpdate()
                    if not self._to_commit:
                        self.ctx.commits.cancel(self)  # it would find nothing, yet keep us
                    return self.attr
                except NodeError as exc:
                    if exc.name != CHANGED:
                        raise
                log.debug("inode %d changed in another client: rebasing our writes", self.ino)
                async with _held(self._write_lock):
                    await self._store_all(self._write_seq)
                    await self._rebase(*await self.ctx.meta.read_chunks(self.ino))

    async def _store_all(self, through: int) -> None:
        """Store every chunk's writes up to write `through`: upload the dirty buffers, wait for
        the uploads that hold them (not for later writes, which may go on forever); raises the
        failure of one that could not be stored."""
        waiting = {idx: log.last_seq(through) for idx, log in self._logs.items()}
        waiting = {idx: need for idx, need in waiting.items() if need}
        for idx in sorted(self._dirty):
            self.start_upload(idx)
        for idx, need in sorted(waiting.items()):
            while self._to_commit.get(idx, 0) < need and self._logs.get(idx):
                upload = self._uploads.get(idx)
                if upload is not None:
                    await upload.done.wait()
                elif idx in self._dirty and idx not in self.failed:
                    self.start_upload(idx)  # its upload failed or started too early: again
                else:
                    break
        for idx in sorted(waiting):
            if idx in self.failed:
                raise self.failed[idx]

    async def _commit(self, update: AttrUpdate) -> bool:
        """Commit every stored chunk, in pages of what one message carries; whether there was
        anything to commit."""
        committing = sorted(self._to_commit)
        for page in _pages([self.chunks[idx] for idx in committing]):
            await self._commit_page(page, update)
        return bool(committing)

    async def _set(self, update: AttrUpdate) -> None:
        command = Setattr(
            self.ino, update.mode, None, None, None, update.atime_ns, update.mtime_ns, 0
        )
        self.attr = await self.ctx.meta.apply(command)

    async def _commit_page(self, indexes: list[int], update: AttrUpdate) -> None:
        """One compare-and-set commit: it fails with CHANGED if another client came first."""
        chunk_size = self.ctx.chunk_size
        taken = {idx: (self.chunks[idx], self._to_commit[idx]) for idx in indexes}
        updates = tuple(
            ChunkUpdate(chunk, *_base_of(self._bases[idx])) for idx, (chunk, _) in taken.items()
        )
        # The size covers stored data only: never bytes still on their way.
        size = max(idx * chunk_size + self._logs[idx].end(upto) for idx, (_, upto) in taken.items())
        expect = self._append_base if self._appended else None
        version = self.attr.version
        commit = CommitChunks(
            self.ino, updates, size, expect, update.atime_ns, update.mtime_ns, update.mode, 0
        )
        attr: Attr = await self.ctx.meta.apply(commit)
        for idx, (chunk, upto) in taken.items():
            self._committed(idx, chunk, upto)
        if attr.version != version + 1:
            # Another client committed too since our view (to other chunks, or a size).
            self.cache_stale = True
        self.attr = attr
        self.size = self._local_size()
        # What is left of the appended bytes goes after the file as this commit left it.
        self._appended = intersect(self._appended, self.uncommitted())
        self._append_base = attr.size

    def _committed(self, idx: int, chunk: Chunk, upto: int) -> None:
        """Chunk `idx` as of write `upto` is committed: newer writes now build on it."""
        self._logs[idx].drop_through(upto)
        if self._to_commit.get(idx) == upto:
            del self._to_commit[idx]
        if self._logs[idx] or idx in self._dirty or idx in self._uploads or idx in self._to_commit:
            self._bases[idx] = chunk
            return
        del self._bases[idx], self._logs[idx]
        self._sealed.pop(idx, None)

    async def _rebase(self, fresh: Attr, chunks: list[Chunk]) -> None:
        """Lay this client's stored writes over the file as another client left it.

        Called with writes held off and every write stored. Each chunk this client wrote is
        built again from the committed chunk with this client's bytes over it and uploaded;
        only then does the state switch to the new layout, so a failure leaves it as it was.
        """
        chunk_size = self.ctx.chunk_size
        old = dict(self.chunks)
        plan = rebase(self.uncommitted(), self._appended, fresh.size)
        committed = {chunk.idx: chunk for chunk in chunks}
        self._write_seq += 1
        seq = self._write_seq
        rebuilt: dict[int, tuple[Chunk, WriteLog]] = {}
        for idx, pieces in sorted(by_chunk(plan.pieces, chunk_size).items()):
            rebuilt[idx] = await self._rebuild(idx, committed.get(idx), pieces, old, seq)
        self.attr = fresh
        self.chunks = committed | {idx: chunk for idx, (chunk, _) in rebuilt.items()}
        self._bases = {idx: committed.get(idx) for idx in rebuilt}
        self._logs = {idx: log for idx, (_, log) in rebuilt.items()}
        self._sealed = dict.fromkeys(rebuilt, seq)
        self._to_commit = dict.fromkeys(rebuilt, seq)
        self.size = max(fresh.size, plan.end)
        self._appended, self._append_base = list(plan.appended), fresh.size
        self.cache_stale = True

    async def _rebuild(
        self, idx: int, base: Chunk | None, pieces: list[Piece], old: dict[int, Chunk], seq: int
    ) -> tuple[Chunk, WriteLog]:
        """Chunk `idx` as committed, with `pieces` of the old local view over it, stored."""
        data = bytearray(self.ctx.chunk_size)
        length = 0
        if base is not None:
            contents = await self._contents(base)
            length = len(contents)
            data[:length] = contents
        log = WriteLog()
        for piece in pieces:
            end = piece.target + piece.length
            data[piece.target : end] = await self._gather(old, piece.source, piece.length)
            log.add(seq, piece.target, end, seq - 1)
            length = max(length, end)
        extends = _extendable(base, (piece.target for piece in pieces))
        return await self._store(idx, memoryview(data)[:length], extends), log

    async def _gather(self, view: dict[int, Chunk], offset: int, size: int) -> bytes:
        """Bytes of the file as `view` maps it (holes read as zeros)."""
        parts = [
            await self._stored_bytes(view.get(idx), within, count)
            for idx, within, count in self._spans(offset, offset + size)
        ]
        return b"".join(parts)

    # -- reading -----------------------------------------------------------------------------

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        """Bytes at `offset`, seeing this client's own unflushed writes; holes read as zeros.

        A read that starts within a chunk of where the last one ended (or at the start of the
        file) fetches its blocks whole and the next chunks' blocks ahead; a random read fetches
        only the bytes it reads.
        """
        end = min(offset + size, self.size)
        ahead = abs(offset - self._read_end) <= self.ctx.chunk_size
        self._read_end = end
        parts = [
            await self._read_chunk(idx, within, count, ahead)
            for idx, within, count in self._spans(offset, end)
        ]
        # One part (a read within a chunk) goes to the kernel as it is, a view of a cached block.
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _spans(self, start: int, end: int) -> Iterator[tuple[int, int, int]]:
        """(chunk index, offset within it, byte count) for each chunk [start, end) touches."""
        chunk_size = self.ctx.chunk_size
        position = start
        while position < end:
            idx, within = divmod(position, chunk_size)
            count = min(end - position, chunk_size - within)
            yield idx, within, count
            position += count

    async def _read_chunk(
        self, idx: int, within: int, count: int, ahead: bool
    ) -> bytes | memoryview:
        buffer = self._dirty.get(idx)
        if buffer is None and idx in self._uploads:
            buffer = self._uploads[idx].buffer
        if buffer is not None:
            return buffer.read(within, count)
        chunk = self.chunks.get(idx)
        try:
            data = await self._stored_bytes(chunk, within, count, whole=ahead)
        except Unavailable:
            if idx in self._bases or not await self._replaced(idx, chunk):
                raise
            # Another client replaced the chunk and its old block is gone: read the new one.
            data = await self._stored_bytes(self.chunks.get(idx), within, count, whole=ahead)
        for later in range(idx + 1, idx + 1 + READAHEAD_CHUNKS if ahead else 0):
            following = self.chunks.get(later)
            if following is not None and not following.inline:
                self.ctx.cache.prefetch(following.block_id, following.checksum)
        return data

    async def _replaced(self, idx: int, chunk: Chunk | None) -> bool:
        """Whether the committed file now maps chunk `idx` elsewhere (then adopt it)."""
        attr, chunks = await self.ctx.meta.read_chunks(self.ino)
        if {c.idx: c for c in chunks}.get(idx) == chunk:
            return False
        self.refresh(attr, chunks)
        return True

    async def _stored_bytes(
        self, chunk: Chunk | None, within: int, count: int, whole: bool = True
    ) -> bytes | memoryview:
        """`count` bytes at `within` of a stored chunk; past its length (or with no chunk: a
        hole) they read as zeros. Not `whole`: a block not cached is not fetched whole, only
        the bytes read (a random read)."""
        if chunk is None:
            return bytes(count)
        end, stored = min(within + count, chunk.length), chunk.stored_length
        pieces: list[bytes | memoryview] = []
        if within < stored and not (whole or chunk.inline):
            pieces.append(
                await self.ctx.cache.read(
                    chunk.block_id, chunk.checksum, within, min(end, stored) - within
                )
            )
        elif within < stored:
            pieces.append(memoryview(await self._block(chunk))[within : min(end, stored)])
        if end > max(within, stored):
            pieces.append(chunk.tail[max(within - stored, 0) : end - stored])
        missing = count - sum(map(len, pieces))
        if missing:
            pieces.append(bytes(missing))
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    async def _contents(self, chunk: Chunk, room: int = 0) -> bytearray:
        """A stored chunk's bytes: its block's, up to its stored length, then its tail, and
        `room` zeros after them (within the chunk size). One copy of the block: an append after
        each fsync builds its buffer from it every time."""
        block = memoryview(await self._block(chunk))[: chunk.stored_length]
        contents = bytearray(min(chunk.length + room, max(self.ctx.chunk_size, chunk.length)))
        contents[: len(block)] = block
        contents[chunk.stored_length : chunk.length] = chunk.tail
        return contents

    async def _block(self, chunk: Chunk) -> bytes:
        """The whole block a chunk names: from the chunk map itself when the metadata keeps
        it, else from the cache or the storage nodes."""
        if chunk.inline:
            return chunk.data
        return await self.ctx.cache.get(chunk.block_id, chunk.checksum)


def _base_of(chunk: Chunk | None) -> tuple[bytes, int]:
    """A committed chunk as a commit names its base: (identity, length), or no block."""
    return (b"", 0) if chunk is None else (chunk.identity, chunk.length)


def _extendable(base: Chunk | None, starts: Iterable[int]) -> Chunk | None:
    """`base`, if its block holds its stored bytes (not the metadata) and every write over it
    starts past them: the chunk built so still begins with those bytes, and may keep the rest
    as its tail (`_tail_fits`)."""
    if base is None or base.inline or any(start < base.stored_length for start in starts):
        return None
    return base


def _tail_fits(base: Chunk, length: int, chunk_size: int) -> bool:
    """Whether a chunk of `length` bytes built on `base`'s stored bytes may keep the rest as
    its tail: more than those, at most `TAIL_MAX` more, and not a full chunk."""
    return base.stored_length < length < chunk_size and length - base.stored_length <= TAIL_MAX


def _pages(chunks: list[Chunk]) -> Iterator[list[int]]:
    """The indexes of `chunks` in commits of at most `CHUNKS_PER_MESSAGE` chunks and about
    `TAIL_PAGE_BYTES` of tails, each far below the frame limit."""
    page: list[int] = []
    tails = 0
    for chunk in chunks:
        page.append(chunk.idx)
        tails += len(chunk.tail)
        if len(page) == commands.CHUNKS_PER_MESSAGE or tails >= commands.TAIL_PAGE_BYTES:
            yield page
            page, tails = [], 0
    if page:
        yield page


@contextlib.asynccontextmanager
async def _held(lock: trio.Lock) -> AsyncIterator[None]:
    """Hold `lock`, unless this task does already (a truncation's flush holds both)."""
    if lock.statistics().owner is trio.lowlevel.current_task():
        yield
        return
    async with lock:
        yield


def _first(*times: int | None) -> int:
    """The first time given (0, the epoch, is a time)."""
    return next(value for value in times if value is not None)
