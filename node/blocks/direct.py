"""Writing block files around the page cache (O_DIRECT), where the filesystem allows it.

A block is written once, fsync'd at once and rarely read back soon by its node (the mount
keeps what it wrote), so copying it into the page cache first is wasted work, and it is the
largest cost of a put: each new page-cache page must be found and filled, which on a virtual
machine costs several times the copy itself. With O_DIRECT the device takes the bytes from
the writer's buffer. That buffer must be aligned, so a write copies its parts into one reused,
aligned buffer (a copy within warm memory), writes it padded to the alignment, and cuts the
file back to its length.

A filesystem that refuses O_DIRECT (EINVAL on the flag or on the write) gets buffered writes
from then on; the bytes on disk are the same either way.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import threading
from collections.abc import Sequence

log = logging.getLogger(__name__)

#: Buffer address, file offset and length granularity that every common device accepts
#: (logical blocks are 512 or 4096 bytes).
ALIGNMENT = 4096

#: Buffers kept for reuse; more concurrent writes than this allocate (and free) their own.
KEPT_BUFFERS = 4


class DirectWriter:
    """Writes whole files from parts, around the page cache while the filesystem allows.

    Safe to call from several threads: each write takes its own buffer from a small pool.
    """

    def __init__(self, direct: bool = True) -> None:
        self.direct = direct
        self._free: list[mmap.mmap] = []
        self._lock = threading.Lock()

    def write(self, fd: int, parts: Sequence[bytes | memoryview]) -> None:
        """Write `parts` one after another from offset 0 of the empty file open as `fd`.

        The caller still fsyncs: O_DIRECT bypasses the cache, not the device's own.
        """
        if self.direct:
            try:
                self._write_direct(fd, parts)
                return
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._refused(fd, exc)
        for part in parts:
            _write_all(fd, part)

    def _write_direct(self, fd: int, parts: Sequence[bytes | memoryview]) -> None:
        length = sum(memoryview(part).nbytes for part in parts)
        padded = -(-length // ALIGNMENT) * ALIGNMENT
        buffer = self._take(padded)
        try:
            with memoryview(buffer) as view:
                at = 0
                for part in parts:
                    with memoryview(part).cast("B") as bytes_of_part:
                        view[at : at + bytes_of_part.nbytes] = bytes_of_part
                        at += bytes_of_part.nbytes
                view[length:padded] = bytes(padded - length)
                fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_DIRECT)
                _write_all(fd, view[:padded])
        finally:
            self._give_back(buffer)
        os.ftruncate(fd, length)

    def _refused(self, fd: int, exc: OSError) -> None:
        """Go back to buffered writes for good, and undo whatever the refused write began."""
        self.direct = False
        log.info("direct writes refused here (%s): writing blocks through the page cache", exc)
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_DIRECT)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)

    def _take(self, size: int) -> mmap.mmap:
        """An aligned buffer of at least `size` bytes (mmap memory is page-aligned)."""
        with self._lock:
            for index, buffer in enumerate(self._free):
                if len(buffer) >= size:
                    return self._free.pop(index)
        return mmap.mmap(-1, size)

    def _give_back(self, buffer: mmap.mmap) -> None:
        """Keep the largest buffers, so that the usual size of a block always finds one."""
        with self._lock:
            self._free.append(buffer)
            self._free.sort(key=len, reverse=True)
            dropped = self._free[KEPT_BUFFERS:]
            del self._free[KEPT_BUFFERS:]
        for extra in dropped:
            extra.close()


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
