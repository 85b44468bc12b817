"""Timed sequential writes and cold reads of one file: what every bench measures with.

Kept apart from `ringfs.tools.bench`, which runs the other benches, so that they can use it.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

# Writes in 1 MiB pieces, like cp on a filesystem that reports a 1 MiB st_blksize.
IO_SIZE = 1024 * 1024


def drop_caches() -> None:
    """Make the read come from the filesystem, not memory (needs root; skipped otherwise)."""
    with contextlib.suppress(OSError), open("/proc/sys/vm/drop_caches", "w") as control:
        control.write("3\n")


def timed_write(path: Path, size: int) -> float:
    """Write `size` bytes in 1 MiB pieces and fsync: MB/s."""
    piece = os.urandom(IO_SIZE)
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        written = 0
        while written < size:
            written += os.write(fd, piece[: min(IO_SIZE, size - written)])
        os.fsync(fd)
    finally:
        os.close(fd)
    return size / (time.perf_counter() - start) / 1e6


def timed_read(path: Path) -> float:
    """Read a file back with cold caches (as root): MB/s."""
    drop_caches()
    start = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as source:
        while chunk := source.read(IO_SIZE):
            total += len(chunk)
    return total / (time.perf_counter() - start) / 1e6
