"""Snapshot images as files: read in parts to be sent, written part by part as they arrive.

An image can be larger than a node's memory, so neither side ever holds more than one part:
the sender reads each part from the image file when its turn comes (`read_part`), and the
receiving `ImageReceiver` writes each part into a file of its own as it arrives, then hands
the whole file to the Raft member with the `SnapshotRequest` that follows the parts. Disk work
runs in worker threads.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import trio

from ringfs.node.errors import NodeError
from ringfs.node.raft.messages import SnapshotRequest

log = logging.getLogger(__name__)

# A snapshot image travels in parts of this size (one message may carry at most 16 MiB).
SNAPSHOT_PART = 1024 * 1024
# The largest image a member accepts: a peer cannot make it fill any amount of disk. Far above
# any metadata database ringfs expects (a billion files), and an image must also fit the
# receiver's free space.
MAX_SNAPSHOT_BYTES = 1024**4
# Room an incoming image leaves free on the receiver's disk, for the Raft log and meta.db.
RESERVE_BYTES = 64 * 1024 * 1024


def read_part(fd: int, offset: int) -> bytes:
    """The part of the open image `fd` at `offset` (blocking: call it in a worker thread)."""
    return os.pread(fd, SNAPSHOT_PART, offset)


@dataclass
class _Incoming:
    src: str
    term: int
    last_index: int
    size: int
    path: Path
    fd: int
    received: int = 0
    # A part is being written in a worker thread: dropping the image then leaves its file to
    # the writer to close, never closing a descriptor another thread still writes to.
    writing: bool = False
    dropped: bool = False

    def discard(self) -> None:
        if self.writing:
            self.dropped = True
            return
        os.close(self.fd)
        self.path.unlink(missing_ok=True)


class ImageReceiver:
    """The receiving side: writes the parts of one image at a time, in order, into a file
    under `directory`. A new image (offset 0) replaces an unfinished one, whoever sent it, so
    at most one image's file is being written at any time."""

    def __init__(self, directory: Path, max_bytes: int = MAX_SNAPSHOT_BYTES) -> None:
        """Creates `directory`, emptied of the images a previous run left unfinished."""
        self._directory = directory
        self._max_bytes = max_bytes
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True)
        self._names = itertools.count()
        self._incoming: _Incoming | None = None
        self._lock = trio.Lock()

    async def add_part(
        self, src: str, term: int, last_index: int, size: int, offset: int, data: bytes
    ) -> None:
        """Write the part at `offset` of `src`'s image of (term, last index), `size` bytes in
        all. Raises NodeError, dropping the unfinished image, for a part that does not
        continue it (one was lost), an image over the limit or the free space (EFBIG,
        ENOSPC), or a disk that fails. Cancellation drops the unfinished image."""
        async with self._lock:
            if size > self._max_bytes:
                self._drop()
                raise NodeError("EFBIG", f"snapshot image of {size} bytes, over {self._max_bytes}")
            if offset == 0:
                await self._start(src, term, last_index, size)
            incoming = self._incoming
            if (
                incoming is None
                or (incoming.src, incoming.term, incoming.last_index, incoming.size)
                != (src, term, last_index, size)
                or incoming.received != offset
                or offset + len(data) > size
            ):
                self._drop()
                raise NodeError("EINVAL", f"snapshot part at offset {offset} out of sequence")
            incoming.writing = True
            try:
                await trio.to_thread.run_sync(os.pwrite, incoming.fd, data, offset)
            except BaseException as exc:
                self._drop()
                if isinstance(exc, OSError):
                    raise NodeError("EIO", f"snapshot image: {exc.strerror}") from None
                raise
            finally:
                incoming.writing = False
                if incoming.dropped:  # dropped while this part was written
                    incoming.discard()
            incoming.received += len(data)

    async def _start(self, src: str, term: int, last_index: int, size: int) -> None:
        self._drop()
        free = (await trio.to_thread.run_sync(shutil.disk_usage, self._directory)).free
        if size + RESERVE_BYTES > free:
            raise NodeError("ENOSPC", f"snapshot image of {size} bytes, {free} bytes free")
        path = self._directory / f"image-{next(self._names)}"
        fd = await trio.to_thread.run_sync(os.open, path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        self._incoming = _Incoming(src, term, last_index, size, path, fd)

    def take(self, request: SnapshotRequest) -> Path | None:
        """The whole image file for `request` (the caller owns it from now on), or None if it
        did not all arrive. A request from another sender leaves the image alone."""
        incoming = self._incoming
        if incoming is None or incoming.src != request.src:
            return None
        matches = (incoming.term, incoming.last_index) == (request.term, request.meta.last_index)
        if not matches or incoming.received != incoming.size:
            self._drop()
            return None
        self._incoming = None
        os.close(incoming.fd)
        return incoming.path

    def close(self) -> None:
        """Drop an unfinished image."""
        self._drop()

    def _drop(self) -> None:
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            incoming.discard()
