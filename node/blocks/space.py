"""How far blocks may fill a node's disk: the reserve kept for the metadata, and the room test.

The Raft log (`raft/`) and the metadata database (`meta.db`, its WAL, snapshot images) share
the disk with the block store. If blocks took its last bytes, SQLite could commit nothing more
and the meta-group member would stop, and with it, when every disk is full, the namespace. So
block writes stop at a high-water mark: a block is refused with ENOSPC, before any byte is
written, when storing it would leave less than the reserve free. Deleting files (through the
garbage collector) lowers the mark again.

Pure arithmetic on one `statvfs` reading; the store does the I/O.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

MiB = 1 << 20

#: The default reserve never falls below this: a small namespace's database with its WAL and
#: a snapshot copy, and a Raft log of `--snapshot-every` entries, take a few MiB; the rest is
#: margin for the metadata to keep growing while block writes are refused.
RESERVE_FLOOR = 64 * MiB
#: ... and is otherwise this share of the filesystem, so a large namespace on a large disk has
#: room for its database to be copied by a snapshot ...
RESERVE_PERCENT = 2.0
#: ... but never more than this: a snapshot copies at most the 1 GiB of `meta.db` a member
#: accepts, so 4 GiB covers the database, a copy being taken, one being received, and the log.
RESERVE_CAP = 4 << 30

#: Inodes blocks must leave free: the metadata creates a few files (WALs, snapshot images), and
#: a disk of small blocks runs out of inodes before bytes.
INODE_RESERVE = 256

#: Inodes one block may take: its file and the two fan-out directories above it.
INODES_PER_BLOCK = 3


@dataclass(frozen=True)
class Reserve:
    """What `--reserve` asks for: a size in bytes, a percentage of the filesystem, or neither
    (the default: 2 % of the filesystem, at least 64 MiB and at most 4 GiB, and never more
    than half of it, so a small disk still stores blocks).

    Raises ValueError for both at once, or a value out of range.
    """

    size: int | None = None
    percent: float | None = None

    def __post_init__(self) -> None:
        if self.size is not None and self.percent is not None:
            raise ValueError("a reserve is a size or a percentage, not both")
        if self.size is not None and self.size < 0:
            raise ValueError("the reserve must not be negative")
        if self.percent is not None and not 0 <= self.percent < 100:
            raise ValueError("the reserve must be a percentage from 0 to below 100")

    def bytes_for(self, total: int) -> int:
        """The reserve in bytes on a filesystem of `total` bytes."""
        if self.size is not None:
            return self.size
        if self.percent is not None:
            return int(total * self.percent / 100)
        default = min(max(RESERVE_FLOOR, int(total * RESERVE_PERCENT / 100)), RESERVE_CAP)
        return min(default, total // 2)


@dataclass(frozen=True)
class Space:
    """One reading of a filesystem's size and free space."""

    total: int
    free: int  # what an unprivileged writer may still use
    unit: int  # the allocation unit: a file takes whole units
    inodes_free: int | None  # None: this filesystem does not count inodes

    @classmethod
    def of(cls, fs: os.statvfs_result) -> Space:
        inodes = fs.f_favail if fs.f_files else None
        return cls(fs.f_blocks * fs.f_frsize, fs.f_bavail * fs.f_frsize, fs.f_frsize, inodes)


@dataclass(frozen=True)
class Capacity:
    """What block writes may use of one filesystem: `capacity` and `free` leave the reserve out."""

    capacity: int
    free: int
    reserve: int

    @classmethod
    def of(cls, space: Space, reserve: int) -> Capacity:
        return cls(max(0, space.total - reserve), max(0, space.free - reserve), reserve)


def footprint(space: Space, size: int) -> int:
    """Bytes a block file of `size` bytes may take: whole units, plus its fan-out directories."""
    return -(-size // space.unit) * space.unit + 2 * space.unit


def refusal(space: Space, reserve: int, pending: int, need: int) -> str | None:
    """Why a block taking `need` bytes must not be written now, or None if it fits.

    `pending` is what writes under way will take that the reading may not show yet.
    """
    left = space.free - pending - need
    if left < reserve:
        return f"{max(0, space.free - pending)} bytes free, {reserve} kept for the metadata"
    if space.inodes_free is not None and space.inodes_free < INODE_RESERVE + INODES_PER_BLOCK:
        return f"{space.inodes_free} inodes free, {INODE_RESERVE} kept for the metadata"
    return None
