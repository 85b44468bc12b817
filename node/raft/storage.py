"""The durable Raft state of one node: term, vote, log entries and the snapshot's place.

Kept in a directory of its own (`raft/`), separate from the metadata it replicates, as an
append-only log of records in segment files. Raft requires each `save` to be on disk before
the node answers or sends anything that depends on it, and a member's log write is on the path
of every command: so a save is one `pwrite` into space the segment already holds, then one
`fdatasync`, which then has only the data to flush (no file size or extent to journal).

A segment is made whole before it is used: zero-filled, headed by a random salt and a record
of the term, the vote and the snapshot's place (`BASE`), fsync'd, then renamed into place.
Each record carries its length and a CRC-32 of the salt, its offset and its bytes. Reading
stops at the first record that does not check: a save torn by a crash is the last record
written, and was never acknowledged. Bytes a torn record left behind cannot pass for a record
later, since a record only checks at its own offset in its own segment.

`compact` appends a `BASE` record with the snapshot's place, then deletes the oldest segments
whose entries it covers: every segment starts with a `BASE`, so deleting a prefix of them loses
no term, vote or entry that is still needed.

Data directories from before this format hold `raft.db` (SQLite); the first open copies it
into a new log and then deletes it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from ringfs.node.durable import fsync_dir
from ringfs.node.errors import StorageFailure
from ringfs.node.raft import legacy_log
from ringfs.node.raft.core import (
    NEW_MEMBER,
    Entry,
    EntryKind,
    HardState,
    SnapshotMeta,
)

#: The log's directory in a node's data directory: present once the node was in the meta group.
LOG_DIR = "raft"
#: The SQLite log of data directories from before `LOG_DIR`.
LEGACY_DB = "raft.db"
#: Size of a segment; a save larger than that gets a segment of its own size.
SEGMENT_BYTES = 4 << 20

_MAGIC = b"RFL1"
_SALT_SIZE = 8
_HEADER = struct.Struct("<4s8s4x")  # magic, salt, reserved
_FRAME = struct.Struct("<II")  # payload length, CRC-32 of (salt, offset, payload)
_OFFSET = struct.Struct("<Q")
_SUFFIX = ".log"
_BASE, _SAVE = 0, 1


def exists(data_dir: Path) -> bool:
    """Whether `data_dir` holds a Raft log (this node was in the meta group)."""
    return (data_dir / LOG_DIR).exists() or (data_dir / LEGACY_DB).exists()


@dataclass
class _Segment:
    number: int
    path: Path
    salt: bytes
    size: int
    #: The highest entry index a record in it appended (0: none).
    last_index: int = 0


class RaftLog:
    """`RaftStorage` as segment files in `directory`. Blocking: the shell calls it from a
    worker thread, except for a follower's `save` (see `RaftNode._save`)."""

    def __init__(
        self,
        directory: Path,
        *,
        legacy: Path | None = None,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        """`legacy`: a `raft.db` to take the state from when `directory` holds no log yet."""
        self._path = directory
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self._segments: list[_Segment] = []
        self._end = 0  # where the next record goes in the last segment
        # A failed write may have left its segment's data in doubt: the next one starts anew.
        self._broken = False
        self._hard_state = NEW_MEMBER
        self._snapshot: SnapshotMeta | None = None
        with self._lock, _failures(directory):
            if not directory.exists():
                self._create(legacy if legacy is not None and legacy.exists() else None)
            for partial in directory.glob(f"*{_SUFFIX}.tmp"):
                partial.unlink()
            if legacy is not None and legacy.exists():
                legacy_log.remove(legacy)  # the log was made whole from it before it was named

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1

    def load(self) -> tuple[HardState, SnapshotMeta | None, list[Entry]]:
        """Everything saved: the node restarts from exactly this. Reads every segment; the
        writer goes on after the last valid record."""
        with self._lock, _failures(self._path):
            return self._scan()

    def save(
        self,
        hard_state: HardState | None,
        truncate_from: int | None,
        append: Sequence[Entry],
    ) -> None:
        """Persist a Ready's state changes in one record; durable when this returns."""
        if hard_state is None and truncate_from is None and not append:
            return
        record = _save_record(hard_state, truncate_from, append)
        with self._lock, _failures(self._path):
            self._opened()
            self._append(record)
            if hard_state is not None:
                self._hard_state = hard_state
            if append:
                last = self._segments[-1]
                last.last_index = max(last.last_index, append[-1].index)

    def compact(self, meta: SnapshotMeta) -> None:
        """The state machine holds everything up to `meta.last_index`: drop those entries."""
        with self._lock, _failures(self._path):
            self._opened()
            self._append(_base(self._hard_state, meta))
            self._snapshot = meta
            while len(self._segments) > 1 and self._segments[0].last_index <= meta.last_index:
                self._segments.pop(0).path.unlink()

    # -- writing -------------------------------------------------------------------------------

    def _opened(self) -> None:
        """Read the log before the first write, if no `load` did."""
        if self._fd < 0:
            self._scan()

    def _create(self, legacy: Path | None) -> None:
        """A new log, or one holding what `legacy` held, made whole in a directory beside
        `self._path` and then renamed to it: a log directory is never half made."""
        directory, staging = self._path, self._path.with_name(self._path.name + ".new")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        self._path = staging
        try:
            if legacy is None:
                self._start_segment(0)
            else:
                self._hard_state, self._snapshot, entries = legacy_log.read(legacy)
                record = _save_record(None, None, entries)
                self._start_segment(len(msgpack.packb(record, use_bin_type=True)))
                self._append(record)
            os.rename(staging, directory)
            fsync_dir(directory.parent)
        finally:
            self._path = directory
            if self._fd >= 0:  # its segment is read again, under its final name
                os.close(self._fd)
            self._fd, self._segments = -1, []

    def _append(self, record: list[Any]) -> None:
        payload = msgpack.packb(record, use_bin_type=True)
        segment = self._segments[-1]
        if self._broken or self._end + _FRAME.size + len(payload) > segment.size:
            self._start_segment(len(payload))
            segment = self._segments[-1]
        frame = _frame(segment.salt, self._end, payload)
        try:
            os.pwrite(self._fd, frame, self._end)
            os.fdatasync(self._fd)
        except OSError:
            self._broken = True
            raise
        self._end += len(frame)

    def _start_segment(self, room: int) -> None:
        """A new last segment with room for a record of `room` bytes after its `BASE`, made
        whole and durable before it is named."""
        number = self._segments[-1].number + 1 if self._segments else 1
        path = self._path / f"{number:08d}{_SUFFIX}"
        partial = path.with_name(path.name + ".tmp")
        salt = os.urandom(_SALT_SIZE)
        base = msgpack.packb(_base(self._hard_state, self._snapshot), use_bin_type=True)
        needed = _HEADER.size + 2 * _FRAME.size + len(base) + room
        size = max(self._segment_bytes, -(-needed // 4096) * 4096)
        start = _HEADER.size
        fd = os.open(partial, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            _zero_fill(fd, size)
            os.pwrite(fd, _HEADER.pack(_MAGIC, salt) + _frame(salt, start, base), 0)
            os.fsync(fd)
            os.rename(partial, path)
            fsync_dir(self._path)
        except BaseException:
            os.close(fd)
            partial.unlink(missing_ok=True)
            raise
        if self._fd >= 0:
            os.close(self._fd)
        self._fd, self._broken = fd, False
        self._segments.append(_Segment(number, path, salt, size))
        self._end = start + _FRAME.size + len(base)

    # -- reading -------------------------------------------------------------------------------

    def _numbers(self) -> list[int]:
        return sorted(int(p.name[: -len(_SUFFIX)]) for p in self._path.glob(f"*{_SUFFIX}"))

    def _scan(self) -> tuple[HardState, SnapshotMeta | None, list[Entry]]:
        """Read every segment in order; the writer goes on after the last valid record."""
        numbers = self._numbers()
        if not numbers:
            raise StorageFailure(f"raft log {self._path}: no segment")
        self._hard_state, self._snapshot = NEW_MEMBER, None
        entries: dict[int, Entry] = {}
        segments = []
        for number in numbers:
            path = self._path / f"{number:08d}{_SUFFIX}"
            with open(path, "rb") as file:
                data = file.read()
            segment, end = self._replay(number, path, data, entries)
            segments.append(segment)
        if self._fd >= 0:
            os.close(self._fd)
        self._segments = segments
        self._fd = os.open(segments[-1].path, os.O_RDWR)
        self._end = end
        floor = self._snapshot.last_index if self._snapshot else 0
        kept = [entries[i] for i in sorted(entries) if i > floor]
        return self._hard_state, self._snapshot, kept

    def _replay(
        self, number: int, path: Path, data: bytes, entries: dict[int, Entry]
    ) -> tuple[_Segment, int]:
        magic, salt = _HEADER.unpack_from(data) if len(data) >= _HEADER.size else (b"", b"")
        if magic != _MAGIC:
            raise StorageFailure(f"raft log {path}: not a log segment")
        segment = _Segment(number, path, salt, len(data))
        offset = _HEADER.size
        while offset + _FRAME.size <= len(data):
            length, crc = _FRAME.unpack_from(data, offset)
            start, stop = offset + _FRAME.size, offset + _FRAME.size + length
            if length == 0 or stop > len(data):
                break
            payload = data[start:stop]
            if _crc(salt, offset, payload) != crc:
                break
            try:
                self._take(msgpack.unpackb(payload, raw=False), segment, entries)
            except (ValueError, TypeError, IndexError) as exc:
                raise StorageFailure(f"raft log {path}: bad record at {offset}: {exc}") from exc
            offset = stop
        return segment, offset

    def _take(self, record: list[Any], segment: _Segment, entries: dict[int, Entry]) -> None:
        if record[0] == _BASE:
            _, hard_state, where, voters = record
            self._hard_state = _hard_state_from_wire(hard_state)
            if where is not None:
                self._snapshot = SnapshotMeta(where[0], where[1], tuple(voters))
            return
        _, hard_state, truncate_from, appended = record
        if hard_state is not None:
            self._hard_state = _hard_state_from_wire(hard_state)
        if truncate_from is not None:
            for index in [i for i in entries if i >= truncate_from]:
                del entries[index]
        for index, term, kind, data in appended:
            entries[index] = Entry(term, index, EntryKind(kind), data)
            segment.last_index = max(segment.last_index, index)


def _save_record(
    hard_state: HardState | None, truncate_from: int | None, append: Sequence[Entry]
) -> list[Any]:
    state = None if hard_state is None else _hard_state_to_wire(hard_state)
    return [_SAVE, state, truncate_from, [[e.index, e.term, int(e.kind), e.data] for e in append]]


def _base(hard_state: HardState, snapshot: SnapshotMeta | None) -> list[Any]:
    """The record that opens a segment, and that `compact` appends: everything but entries."""
    where = None if snapshot is None else [snapshot.last_index, snapshot.last_term]
    voters = None if snapshot is None else list(snapshot.voters)
    return [_BASE, _hard_state_to_wire(hard_state), where, voters]


def _hard_state_to_wire(state: HardState) -> list[Any]:
    return [state.term, state.voted_for, state.recovering]


def _hard_state_from_wire(wire: list[Any]) -> HardState:
    term, voted_for, recovering = wire
    return HardState(term, voted_for, recovering)


def _crc(salt: bytes, offset: int, payload: bytes) -> int:
    return zlib.crc32(payload, zlib.crc32(salt + _OFFSET.pack(offset)))


def _frame(salt: bytes, offset: int, payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), _crc(salt, offset, payload)) + payload


def _zero_fill(fd: int, size: int) -> None:
    """Write zeros over the whole segment, so that later writes into it allocate nothing."""
    zeros = bytes(min(size, 1 << 20))
    for offset in range(0, size, len(zeros)):
        os.pwrite(fd, zeros[: size - offset], offset)


@contextlib.contextmanager
def _failures(path: Path) -> Iterator[None]:
    """An error of the disk is a `StorageFailure`: Raft cannot go on without its log."""
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        raise StorageFailure(f"raft log {path}: {exc}") from exc
