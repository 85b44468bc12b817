"""The node's block store: one checksummed file per immutable block.

Plain blocking functions with no sockets and no trio: the server runs them in worker threads
(`trio.to_thread.run_sync`), so they must be safe to call concurrently. A block is written to
a temp file (around the page cache where the filesystem allows, see `direct.py`), fsync'd,
renamed into place and its directory fsync'd, so after a crash a block is either whole or
absent. A store root belongs to one node process.

File layout: `root/blocks/<2 hex>/<2 hex>/<32 hex>` holding a header (magic, data length,
checksum of the data) followed by the data.

Block writes stop short of filling the disk: a block that would leave less free space than the
reserve (see `space.py`) is refused with ENOSPC before any byte is written, so the Raft log and
the metadata database on the same disk always have room.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ringfs.node.blocks.direct import DirectWriter
from ringfs.node.blocks.space import Capacity, Reserve, Space, footprint, refusal
from ringfs.node.blocks.tally import Tally
from ringfs.node.blocks.verified import RecentlyVerified
from ringfs.node.checksum import CHECKSUM_SIZE, SHA256_SIZE, is_checksum, matches
from ringfs.node.durable import fsync_dir
from ringfs.node.errors import CORRUPT, NodeError

log = logging.getLogger(__name__)

#: Block ids are 16 random bytes, stored as 32 hex characters.
BLOCK_ID_SIZE = 16

#: Identifies a block file, and so the length of its checksum: RFB1 files (written before
#: protocol version 13) hold sha256, RFB2 files XXH3-128 (see `ringfs.node.checksum`).
CHECKSUM_SIZES = {b"RFB1": SHA256_SIZE, b"RFB2": CHECKSUM_SIZE}
_MAGICS = {size: magic for magic, size in CHECKSUM_SIZES.items()}

#: magic, data length (unsigned 64-bit big-endian), checksum of the data (zero-padded).
_HEADER = struct.Struct(">4sQ32s")
HEADER_SIZE = _HEADER.size


@dataclass(frozen=True)
class StoreStats:
    """Usage of a store: what it holds and what its filesystem has left."""

    blocks: int
    bytes: int  # data bytes, headers not counted
    space: Capacity
    #: False while the first count of the store runs: blocks and bytes are a part of it.
    counted: bool = True


def validate_block_id(obj: object) -> bytes:
    """Return `obj` if it is a block id (16 raw bytes); else raise NodeError("EINVAL").

    Only raw bytes of a fixed length are accepted, so a request can never name a path
    outside the store (no "..", no separators).
    """
    if not isinstance(obj, bytes) or len(obj) != BLOCK_ID_SIZE:
        raise NodeError("EINVAL", f"bad block id {obj!r:.60}")
    return obj


def _os_error(exc: OSError, what: str) -> NodeError:
    """The NodeError carrying this OSError's errno name (EIO if it has none)."""
    name = errno.errorcode.get(exc.errno or errno.EIO, "EIO")
    return NodeError(name, f"{what}: {exc.strerror or exc}")


class BlockStore:
    """Blocks on a local filesystem under `root`, leaving `reserve` of it free."""

    def __init__(self, root: Path, reserve: Reserve | None = None) -> None:
        """Create the directories and remove temp files left by a crash.

        Raises OSError if the root cannot be created or read.
        """
        self.root = root
        self.reserve = reserve or Reserve()
        # Bytes that writes under way will take: statvfs may not show them yet.
        self._pending = 0
        self._pending_lock = threading.Lock()
        self._tally = Tally()
        self._verified = RecentlyVerified()
        self._full = False
        self._writer = DirectWriter()
        self._blocks = root / "blocks"
        self._tmp = root / "tmp"
        self._quarantine = root / "quarantine"
        # Unique temp names: one process per root, and next() on a count is thread-safe.
        self._tmp_seq = itertools.count()
        for path in (self._blocks, self._tmp, self._quarantine):
            path.mkdir(parents=True, exist_ok=True)
        self._clean_tmp()

    def _clean_tmp(self) -> None:
        # A temp file is never renamed after a restart: it is a write that died mid-way.
        stale = list(self._tmp.iterdir())
        for path in stale:
            path.unlink(missing_ok=True)
        if stale:
            log.info("removed %d stale temp files from %s", len(stale), self._tmp)

    def _path(self, block_id: bytes) -> Path:
        name = validate_block_id(block_id).hex()
        return self._blocks / name[:2] / name[2:4] / name

    def put(self, block_id: bytes, data: bytes | memoryview, checksum: bytes) -> None:
        """Store a block durably once its data matches `checksum`.

        Idempotent: a valid copy with the same checksum is left as is; a corrupt copy is
        quarantined and replaced. Raises NodeError: EINVAL for a bad id or checksum,
        CORRUPT if the data does not match, EEXIST if a valid block with another checksum
        has this id, or the errno name of a failed write (ENOSPC, ...), in which case
        nothing is left behind.
        """
        path = self._path(block_id)
        view = memoryview(data).cast("B")
        _verify(block_id, view, checksum)
        if self._holds(block_id, path, checksum):
            return
        need = self._claim(HEADER_SIZE + len(view))
        try:
            self._write(block_id, path, _header(len(view), checksum), view)
        finally:
            with self._pending_lock:
                self._pending -= need
        log.debug("stored block %s (%d bytes)", block_id.hex(), len(view))

    def _claim(self, size: int) -> int:
        """Count a write of `size` bytes as pending and return what it takes.

        Raises NodeError("ENOSPC") if it would leave less than the reserve free.
        """
        with self._pending_lock:
            space = self._space()
            need = footprint(space, size)
            reason = refusal(space, self.reserve.bytes_for(space.total), self._pending, need)
            self._note_full(reason)
            if reason is not None:
                raise NodeError("ENOSPC", f"block store full: {reason}")
            self._pending += need
            return need

    def _note_full(self, reason: str | None) -> None:
        """Log the store filling up and getting room again, once each, not per block."""
        if reason is not None and not self._full:
            log.warning("block store %s is full (%s): refusing new blocks", self.root, reason)
        elif reason is None and self._full:
            log.info("block store %s has room again", self.root)
        self._full = reason is not None

    def _space(self) -> Space:
        return Space.of(os.statvfs(self.root))

    def _holds(self, block_id: bytes, path: Path, wanted: bytes) -> bool:
        """Whether a valid copy with checksum `wanted` is already stored.

        A corrupt copy is quarantined by the read, so the caller replaces it.
        """
        try:
            _, stored = self._read(block_id, path)
        except NodeError as exc:
            if exc.name in ("ENOENT", CORRUPT):
                return False
            raise
        if stored != wanted:
            raise NodeError("EEXIST", f"block {block_id.hex()}: stored with another checksum")
        return True

    def _write(self, block_id: bytes, path: Path, header: bytes, data: memoryview) -> None:
        tmp = self._tmp / f"{path.name}.{next(self._tmp_seq)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                self._writer.write(fd, (header, data))
                os.fsync(fd)
            finally:
                os.close(fd)
            self._make_dirs(path.parent)
            with self._tally.lock:
                replaced = _size_of(path)
                os.replace(tmp, path)
                self._tally.changed(
                    block_id, 0 if replaced else 1, len(data) - max(replaced - HEADER_SIZE, 0)
                )
            fsync_dir(path.parent)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise _os_error(exc, f"writing block {path.name}") from exc

    def _make_dirs(self, directory: Path) -> None:
        """Create the fan-out directories, fsyncing the parent of each new one so the
        block's path survives a crash too."""
        if directory.is_dir():
            return
        self._make_dirs(directory.parent)
        # Another thread may have just made it but not yet fsync'd its parent: fsync anyway.
        with contextlib.suppress(FileExistsError):
            directory.mkdir()
        fsync_dir(directory.parent)

    def get(self, block_id: bytes) -> tuple[bytes, bytes]:
        """Return (data, checksum) of a stored block, verified.

        Raises NodeError: EINVAL for a bad id, ENOENT if absent, CORRUPT if the copy fails
        verification (the file is then moved to quarantine), or the errno name of a failed
        read.
        """
        return self._read(block_id, self._path(block_id))

    def get_span(self, block_id: bytes, offset: int, length: int) -> tuple[bytes, bytes]:
        """`length` bytes of a stored block at `offset` (fewer past its end) and its checksum.

        Only those bytes are read when the whole block was verified a moment ago (see
        `ringfs.node.blocks.verified`); otherwise the whole block is read and verified, as by
        `get`, which raises the same errors.
        """
        path = self._path(block_id)
        if self._verified.holds(block_id, time.monotonic()):
            try:
                with path.open("rb") as file:
                    header = file.read(HEADER_SIZE)
                    if _header_problem(header, os.fstat(file.fileno()).st_size) is None:
                        magic, stored_length, field = _HEADER.unpack(header)
                        start = min(offset, stored_length)
                        part = os.pread(
                            file.fileno(),
                            min(length, stored_length - start),
                            HEADER_SIZE + start,
                        )
                        return part, field[: CHECKSUM_SIZES[magic]]
            except FileNotFoundError:
                pass  # gone meanwhile: the whole read says so
            except OSError as exc:
                raise _os_error(exc, f"reading block {block_id.hex()}") from exc
        data, stored = self._read(block_id, path)
        return data[offset : offset + length], stored

    def _read(self, block_id: bytes, path: Path) -> tuple[bytes, bytes]:
        try:
            with path.open("rb") as file:
                size = os.fstat(file.fileno()).st_size
                header = file.read(HEADER_SIZE)
                problem = _header_problem(header, size)
                if problem is None:
                    magic, length, field = _HEADER.unpack(header)
                    stored = field[: CHECKSUM_SIZES[magic]]
                    data = file.read(length)
                    if not matches(data, stored):
                        problem = "checksum mismatch"
        except FileNotFoundError as exc:
            raise NodeError("ENOENT", f"block {block_id.hex()}") from exc
        except OSError as exc:
            raise _os_error(exc, f"reading block {block_id.hex()}") from exc
        if problem is not None:
            self._quarantine_file(block_id, path, problem)
            raise NodeError(CORRUPT, f"block {block_id.hex()}: {problem}")
        self._verified.verified(block_id, time.monotonic())
        return data, stored

    def _quarantine_file(self, block_id: bytes, path: Path, problem: str) -> None:
        """Move a bad copy aside (kept for inspection) so it is never served again."""
        self._verified.forget(block_id)
        target = self._quarantine / f"{path.name}.{time.time_ns()}"
        with self._tally.lock:
            size = _size_of(path)
            try:
                os.replace(path, target)
            except FileNotFoundError:
                return  # a concurrent reader already moved it
            self._tally.changed(block_id, -1, -max(size - HEADER_SIZE, 0))
        log.warning("block %s is corrupt (%s): quarantined as %s", block_id.hex(), problem, target)

    def delete(self, block_id: bytes) -> bool:
        """Remove a block durably; False if it was not there. Raises NodeError (EINVAL, errno
        name).

        The directory is fsync'd: the garbage collector forgets an id once every node said it
        is deleted, so a delete lost in a crash would never be redone.
        """
        path = self._path(block_id)
        self._verified.forget(block_id)
        try:
            with self._tally.lock:
                size = _size_of(path)
                path.unlink()
                self._tally.changed(block_id, -1, -max(size - HEADER_SIZE, 0))
            fsync_dir(path.parent)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _os_error(exc, f"deleting block {block_id.hex()}") from exc
        log.debug("deleted block %s", block_id.hex())
        return True

    def exists(self, block_id: bytes) -> bool:
        """Whether a copy is stored (not verified). Raises NodeError("EINVAL") for a bad id."""
        return self._path(block_id).is_file()

    def absent(self, block_ids: Iterable[bytes]) -> list[bytes]:
        """The ids of which no copy is stored (not verified: reads and scrub do that)."""
        return [block_id for block_id in block_ids if not self.exists(block_id)]

    def ages(self, block_ids: Iterable[bytes]) -> dict[bytes, tuple[float, int]]:
        """Seconds since each stored block was written (its file's mtime), and its data
        length; absent ids are left out."""
        now = time.time()
        ages = {}
        for block_id in block_ids:
            with contextlib.suppress(FileNotFoundError):
                found = self._path(block_id).stat()
                ages[block_id] = (now - found.st_mtime, max(found.st_size - HEADER_SIZE, 0))
        return ages

    def ids(self) -> Iterator[bytes]:
        """Every stored block id, in no particular order; ignores foreign files."""
        for entry in self._files():
            yield bytes.fromhex(entry.name)

    def ids_after(self, after: bytes | None) -> Iterator[bytes]:
        """The stored ids greater than `after` (all if None), in id order, listing one
        fan-out directory at a time."""
        start = "" if after is None else after.hex()
        for top in _sorted_hex_dirs(self._blocks, start[:2]):
            for mid in _sorted_hex_dirs(top, start[2:4] if top.name == start[:2] else ""):
                names = sorted(
                    entry.name
                    for entry in os.scandir(mid)
                    if _is_block_name(entry.name) and entry.name > start
                )
                for name in names:
                    yield bytes.fromhex(name)

    def _files(self) -> Iterator[os.DirEntry[str]]:
        for top in os.scandir(self._blocks):
            if not _is_hex_dir(top):
                continue
            for mid in os.scandir(top.path):
                if not _is_hex_dir(mid):
                    continue
                for entry in os.scandir(mid.path):
                    if _is_block_name(entry.name) and entry.is_file():
                        yield entry

    def capacity(self) -> Capacity:
        """What blocks may use of the store's filesystem (one statvfs: cheap, unlike `stats`)."""
        space = self._space()
        return Capacity.of(space, self.reserve.bytes_for(space.total))

    def stats(self) -> StoreStats:
        """What the store holds (kept as it changes, see `count`) and its free space."""
        tally = self._tally
        with tally.lock:
            blocks, data_bytes, complete = tally.blocks, tally.data_bytes, tally.complete
        return StoreStats(blocks, data_bytes, self.capacity(), complete)

    def count(self) -> None:
        """Walk the store once, in id order, to start the tally `stats` reports (slow on a
        large store: run it in a worker thread beside the node's work)."""
        after = ""
        while True:
            with self._tally.lock:
                tops = [top for top in _sorted_hex_dirs(self._blocks, after) if top.name > after]
                if not tops:
                    self._tally.complete = True
                    return
                blocks = data_bytes = 0
                for mid in _sorted_hex_dirs(tops[0], ""):
                    for entry in os.scandir(mid):
                        size = _entry_size(entry)
                        if size is not None:
                            blocks += 1
                            data_bytes += max(0, size - HEADER_SIZE)
                after = tops[0].name
                self._tally.counted(bytes.fromhex(after) + b"\xff" * 15, blocks, data_bytes)


def _verify(block_id: bytes, data: memoryview, expected: object) -> None:
    """Raise NodeError: EINVAL if `expected` is no checksum, CORRUPT if the data differs."""
    if not is_checksum(expected):
        raise NodeError("EINVAL", f"block {block_id.hex()}: bad checksum {expected!r:.80}")
    if not matches(data, expected):
        raise NodeError(CORRUPT, f"block {block_id.hex()}: data does not match checksum")


def _header(length: int, checksum: bytes) -> bytes:
    """The header of a block of `length` bytes, in the format its checksum's kind needs."""
    return _HEADER.pack(_MAGICS[len(checksum)], length, checksum)


def _header_problem(header: bytes, size: int) -> str | None:
    """Why a block file with this header and total size is bad, or None if it is plausible."""
    if len(header) < HEADER_SIZE:
        return "truncated header"
    magic, length, _ = _HEADER.unpack(header)
    if magic not in CHECKSUM_SIZES:
        return f"bad magic {magic!r}"
    if size != HEADER_SIZE + length:
        return f"size {size} does not match length {length}"
    return None


def _size_of(path: Path) -> int:
    """The size of a file, 0 if there is none."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _entry_size(entry: os.DirEntry[str]) -> int | None:
    """The size of a block file in a listing; None for anything else (or gone meanwhile)."""
    if not _is_block_name(entry.name):
        return None
    try:
        return entry.stat().st_size if entry.is_file() else None
    except FileNotFoundError:
        return None


def _sorted_hex_dirs(parent: Path | os.DirEntry[str], first: str) -> list[os.DirEntry[str]]:
    """The fan-out directories in `parent` named `first` or later, in name order."""
    found = [entry for entry in os.scandir(parent) if _is_hex_dir(entry) and entry.name >= first]
    return sorted(found, key=lambda entry: entry.name)


def _is_hex_dir(entry: os.DirEntry[str]) -> bool:
    return len(entry.name) == 2 and _is_hex(entry.name) and entry.is_dir()


def _is_block_name(name: str) -> bool:
    return len(name) == 2 * BLOCK_ID_SIZE and _is_hex(name)


def _is_hex(name: str) -> bool:
    # Lower case only, as written by bytes.hex(); int(name, 16) would accept "0x", "_", " ".
    return all(char in "0123456789abcdef" for char in name)
