"""`ringfs bench --parts`, first part: what applying one small file's log entry costs a replica.

Every member of the metadata group applies every entry, and the leader does so on the path of
each `close`. This builds, in a fresh `meta.db` in a scratch directory, the entries a mount
makes for `files` new 4 KiB files in 20 directories it holds (each file one `Batch`: its
`Mknod` and the `CommitChunks` carrying its bytes), and applies them one entry at a time, as
the leader does. It prints the time each took (median, p90, mean), with no cluster, network
or other process in the way: two builds on one machine give comparable numbers, which a
timing through a mount, with five processes sharing the cores, does not.

Numbers, not verdicts: `docs/performance.md` reads them.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgpack

from ringfs.node.checksum import checksum
from ringfs.node.meta.commands import (
    BLOCK_ID_SIZE,
    ROOT_INO,
    Batch,
    Chunk,
    ChunkUpdate,
    Command,
    CommitChunks,
    Delegate,
    Entry,
    Init,
    Mkdir,
    Mknod,
    OpenSession,
    Outcome,
    Reserve,
)
from ringfs.node.meta.replica import MetaMachine
from ringfs.node.meta.state import RESERVE_MAX
from ringfs.node.raft.messages import Entry as LogEntry
from ringfs.node.raft.messages import EntryKind

DIRECTORIES = 20
FILE_BYTES = 4096
#: The entries before these are left out of the figures: the database's first pages.
WARMUP = 200
#: The most files one reservation of inode numbers covers, beside the directories.
MAX_FILES = RESERVE_MAX - DIRECTORIES


class _Log:
    """One mount's session applied entry by entry to a fresh machine, as the leader applies."""

    def __init__(self, machine: MetaMachine) -> None:
        self.machine = machine
        self.client = os.urandom(16)
        self.index = 0
        self.seq = 0

    def apply(self, command: Command, *, numbered: bool = True) -> tuple[Any, float]:
        """The command's result and the seconds its apply took; raises if it failed.
        `numbered`: with the next sequence number of the session, as a mount's commands."""
        self.index += 1
        entry = Entry(command, self.client)
        if numbered:
            self.seq += 1
            entry = Entry(command, self.client, self.seq, self.seq)
        data = msgpack.packb(entry.to_wire(), use_bin_type=True)
        logged = LogEntry(1, self.index, EntryKind.COMMAND, data)
        start = time.perf_counter()
        (applied,) = self.machine.apply([logged])
        seconds = time.perf_counter() - start
        outcomes = [applied.outcome]
        if isinstance(command, Batch):
            outcomes += [Outcome.from_wire(wire) for wire in applied.outcome.result]
        failed = [outcome.error for outcome in outcomes if outcome.error is not None]
        if failed:
            raise RuntimeError(f"{command.OP} at index {self.index} failed: {failed}")
        return applied.outcome.result, seconds


def small_files(log: _Log, files: int) -> list[float]:
    """Make `files` small files in directories the session holds; seconds of each entry."""
    now = time.time_ns()
    log.apply(Init(1 << 22, os.getuid(), os.getgid(), now), numbered=False)
    log.apply(OpenSession(), numbered=False)
    first, _ = log.apply(Reserve(DIRECTORIES + files))
    dirs = range(first, first + DIRECTORIES)
    for n, d in enumerate(dirs):
        log.apply(Batch((), (Mkdir(ROOT_INO, b"d%02d" % n, 0o755, 0, 0, now, d), Delegate(d))))
    data = os.urandom(FILE_BYTES)
    seconds = []
    for k in range(files):
        ino, parent = first + DIRECTORIES + k, dirs[k % DIRECTORIES]
        chunk = Chunk(0, os.urandom(BLOCK_ID_SIZE), len(data), checksum(data), data)
        create = Mknod(parent, b"f%d" % k, 0o100644, 0, 0, 0, now + k, ino)
        update = ChunkUpdate(chunk, b"", 0)
        commit = CommitChunks(ino, (update,), len(data), None, None, None, None, now + k)
        seconds.append(log.apply(Batch((parent,), (create, commit)))[1])
    return seconds[WARMUP:]


def run(directory: Path, files: int) -> None:
    with tempfile.TemporaryDirectory(dir=directory, prefix="ringfs-apply-") as scratch:
        machine = MetaMachine(Path(scratch) / "meta.db")
        try:
            seconds = sorted(small_files(_Log(machine), files))
        finally:
            machine.state.close()
    print(f"applying one small file's entry (Mknod + CommitChunks, {FILE_BYTES} bytes inline),")
    print(f"{len(seconds)} entries after the first {WARMUP}, one at a time:")
    print(f"  median {statistics.median(seconds) * 1e6:7.0f} µs")
    print(f"  p90    {seconds[int(0.9 * (len(seconds) - 1))] * 1e6:7.0f} µs")
    print(f"  mean   {statistics.mean(seconds) * 1e6:7.0f} µs")
