"""Scrub's bookkeeping: where a node's pass through its own blocks is, kept across restarts.

A pass reads every block the node stores, in id order, and verifies it against its checksum;
a corrupt copy is quarantined by the read, and repair stores it again. One pass starts every
`period` seconds. The position is saved in a small JSON file, so a node that restarts goes on
from where it was instead of starting over (a pass over a large disk takes days at a rate
that leaves the disk to the mounts). Ids are random, so the position of the last id verified
on the ring is the share of the pass done.

Pure apart from reading and writing that file: the shell (`node/scrubber.py`) reads the blocks
and keeps the clock.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ringfs.node.cluster.ring import RING_SIZE, block_point
from ringfs.node.durable import fsync_dir

MiB = 1024 * 1024


@dataclass(frozen=True)
class ScrubConfig:
    #: Seconds from the start of one pass to the start of the next.
    period: float = 7 * 24 * 3600.0
    #: Bytes per second a pass reads.
    rate: float = 16 * MiB


@dataclass
class ScrubState:
    """The pass under way (if `started` is set) and the last one finished. Times are wall-clock
    seconds: they must mean the same after a restart."""

    started: float | None = None
    #: The last id verified in the pass under way (hex); None: none yet.
    cursor: str | None = None
    verified: int = 0
    verified_bytes: int = 0
    corrupt: int = 0
    last_started: float | None = None
    last_finished: float | None = None
    last_verified: int = 0
    last_corrupt: int = 0

    def due(self, now: float, period: float) -> float:
        """Seconds until the next pass should start (0: now, or one is under way)."""
        if self.started is not None or self.last_started is None:
            return 0.0
        return max(0.0, self.last_started + period - now)

    def begin(self, now: float) -> None:
        """Start a pass, unless one is under way (resumed after a restart)."""
        if self.started is None:
            self.started, self.cursor = now, None
            self.verified = self.verified_bytes = self.corrupt = 0

    def after(self) -> bytes | None:
        """The id the pass goes on after (None: from the first)."""
        return None if self.cursor is None else bytes.fromhex(self.cursor)

    def checked(self, block_id: bytes, size: int, corrupt: bool) -> None:
        """One more block read: good (`size` bytes verified) or corrupt."""
        self.cursor = block_id.hex()
        if corrupt:
            self.corrupt += 1
        else:
            self.verified += 1
            self.verified_bytes += size

    def end(self, now: float) -> None:
        """The pass read every block."""
        self.last_started, self.last_finished = self.started, now
        self.last_verified, self.last_corrupt = self.verified, self.corrupt
        self.started = self.cursor = None

    def progress(self) -> float | None:
        """The share of the pass under way done, from 0 to 1; None when none is."""
        if self.started is None:
            return None
        if self.cursor is None:
            return 0.0
        return block_point(bytes.fromhex(self.cursor)) / RING_SIZE

    def to_wire(self) -> dict[str, Any]:
        return {**asdict(self), "progress": self.progress()}


def load(path: Path) -> ScrubState:
    """The saved state, or a fresh one when there is none or it cannot be read (a pass then
    starts over: scrubbing twice loses nothing)."""
    try:
        state = ScrubState(**json.loads(path.read_text()))
        if state.cursor is not None:
            bytes.fromhex(state.cursor)
        numbers = [value for name, value in asdict(state).items() if name != "cursor"]
        if not all(value is None or type(value) in (int, float) for value in numbers):
            raise TypeError("not a number")
    except (OSError, ValueError, TypeError):
        return ScrubState()
    return state


def save(path: Path, state: ScrubState) -> None:
    """Replace the saved state (atomically and durably)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as file:
        json.dump(asdict(state), file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)
