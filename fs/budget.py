"""The mount-wide cap on chunk buffers, so that copying a file of any size holds at most a
fixed number of chunks in memory."""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol

import trio


class BufferOwner(Protocol):
    """An open file holding chunk buffers (`FileState`)."""

    ino: int
    failed: dict[int, BaseException]

    def start_upload(self, idx: int) -> None: ...

    def is_uploading(self, idx: int) -> bool: ...


class WriteBudget:
    """Caps the chunk buffers held by the whole mount (being filled, dirty, or uploading).

    A writer that finds no free slot waits for one. If no upload is running, no slot will
    free itself, so the least recently written dirty buffer is uploaded early to make room.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = limit
        self._uploads = 0
        self._dirty: OrderedDict[tuple[int, int], BufferOwner] = OrderedDict()
        self._changed = trio.Event()

    @property
    def free(self) -> int:
        """Slots nobody holds."""
        return self._free

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

    def touch(self, owner: BufferOwner, idx: int) -> None:
        """Note a write to a dirty buffer (recently written buffers are evicted last)."""
        key = (owner.ino, idx)
        if key not in self._dirty:
            self._notify()  # a waiter may now have a dirty buffer to evict
        self._dirty[key] = owner
        self._dirty.move_to_end(key)

    def drop(self, owner: BufferOwner, idx: int) -> None:
        """A dirty buffer given up (its file is gone with its last handle): its slot is free."""
        self._dirty.pop((owner.ino, idx), None)
        self.release()

    def upload_started(self, owner: BufferOwner, idx: int) -> None:
        self._dirty.pop((owner.ino, idx), None)
        self._uploads += 1

    def upload_finished(self) -> None:
        self._uploads -= 1
        self.release()

    def upload_failed(self, owner: BufferOwner, idx: int) -> None:
        """The upload's buffer went back to dirty: it keeps its slot."""
        self._uploads -= 1
        self.touch(owner, idx)
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()
