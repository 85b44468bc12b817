"""`RaftLog`: what `save` and `compact` got is what `load` gives back, across reopens, torn
writes and segment changes; a failing disk is a `StorageFailure`, never a half-saved state;
a `raft.db` of an older version becomes a log holding the same."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from ringfs.node.errors import StorageFailure
from ringfs.node.raft import storage
from ringfs.node.raft.core import (
    NEW_MEMBER,
    Entry,
    EntryKind,
    HardState,
    SnapshotMeta,
    encode_voters,
)
from ringfs.node.raft.storage import LEGACY_DB, LOG_DIR, RaftLog

VOTERS = ("n1", "n2", "n3")


def entries(first: int, last: int, term: int = 1, size: int = 0) -> list[Entry]:
    return [
        Entry(term, i, EntryKind.COMMAND, b"e%d" % i + b"." * size) for i in range(first, last + 1)
    ]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / LOG_DIR


@pytest.fixture
def log(log_dir: Path) -> Iterator[RaftLog]:
    opened = RaftLog(log_dir)
    yield opened
    opened.close()


def reopened(log: RaftLog, directory: Path, **options: int) -> RaftLog:
    log.close()
    return RaftLog(directory, **options)


def test_saved_state_survives_a_reopen(log: RaftLog, log_dir: Path) -> None:
    log.save(HardState(1, "n1"), None, entries(1, 5))
    log.save(HardState(2, "n2"), 4, entries(4, 6, term=2))  # a conflict from index 4
    log.compact(SnapshotMeta(2, 1, VOTERS))
    log = reopened(log, log_dir)
    hard_state, snapshot, kept = log.load()
    assert hard_state == HardState(2, "n2")
    assert snapshot == SnapshotMeta(2, 1, VOTERS)
    assert kept == [*entries(3, 3), *entries(4, 6, term=2)]
    log.close()


def test_a_new_log_is_a_member_no_leader_brought_up_to_date(log: RaftLog, log_dir: Path) -> None:
    assert log.load() == (NEW_MEMBER, None, [])
    assert storage.exists(log_dir.parent)
    log.save(HardState(3, "n2", recovering=False), None, ())
    log = reopened(log, log_dir)
    assert log.load()[0] == HardState(3, "n2")
    log.close()


def test_no_log_before_the_first_open(tmp_path: Path) -> None:
    assert not storage.exists(tmp_path)
    (tmp_path / f"{LOG_DIR}.new").mkdir()  # a creation cut short
    assert not storage.exists(tmp_path)
    RaftLog(tmp_path / LOG_DIR).close()
    assert storage.exists(tmp_path)
    assert not (tmp_path / f"{LOG_DIR}.new").exists()


def test_a_torn_last_save_is_not_there_and_the_log_goes_on(log: RaftLog, log_dir: Path) -> None:
    log.save(HardState(1, "n1"), None, entries(1, 3))
    end = log._end
    log.save(HardState(2, "n2"), None, entries(4, 4, size=3000))
    # The crash cut the last record: its last bytes never reached the disk.
    (segment,) = segments(log_dir)
    with open(segment, "r+b") as file:
        file.seek(log._end - 100)
        file.write(bytes(100))
    log = reopened(log, log_dir)
    assert log.load() == (HardState(1, "n1"), None, entries(1, 3))
    assert log._end == end
    # A shorter save goes where the torn one was; what the torn one left after it is no record.
    log.save(None, None, entries(4, 4, term=3))
    log = reopened(log, log_dir)
    assert log.load() == (HardState(1, "n1"), None, [*entries(1, 3), *entries(4, 4, term=3)])
    log.close()


def test_a_record_counts_only_at_its_own_place(log: RaftLog, log_dir: Path) -> None:
    """A whole record's bytes somewhere else (left by a torn write, or inside a file's data in
    a command) are not taken for a record."""
    log.save(HardState(1, "n1"), None, entries(1, 1))
    first = log._end
    log.save(HardState(5, "n1"), None, entries(2, 2))
    second = log._end
    log.save(HardState(2, "n2"), 2, entries(2, 2, term=3))
    (segment,) = segments(log_dir)
    record = segment.read_bytes()[second : log._end]
    with open(segment, "r+b") as file:
        file.seek(first)
        file.write(record + bytes(log._end - first - len(record)))  # the last one, earlier
    log = reopened(log, log_dir)
    assert log.load() == (HardState(1, "n1"), None, entries(1, 1))
    log.close()


def test_saves_roll_over_to_new_segments(log_dir: Path) -> None:
    log = RaftLog(log_dir, segment_bytes=8192)
    for index in range(1, 41):
        log.save(HardState(index, "n1"), None, entries(index, index, size=500))
    assert len(segments(log_dir)) >= 3
    big = entries(41, 42, size=20000)  # more than a segment: a segment of its own
    log.save(None, None, big)
    log = reopened(log, log_dir, segment_bytes=8192)
    assert log.load() == (HardState(40, "n1"), None, [*entries(1, 40, size=500), *big])
    log.close()


def test_compaction_deletes_the_segments_it_covers(log_dir: Path) -> None:
    log = RaftLog(log_dir, segment_bytes=8192)
    log.save(HardState(7, "n2"), None, ())
    for index in range(1, 41):
        log.save(None, None, entries(index, index, size=500))
    before = segments(log_dir)
    log.compact(SnapshotMeta(30, 1, VOTERS))
    after = segments(log_dir)
    assert len(after) < len(before)
    assert after == before[-len(after) :]  # the oldest went
    log = reopened(log, log_dir, segment_bytes=8192)
    # The vote was saved in a deleted segment: every segment starts with the state.
    assert log.load() == (
        HardState(7, "n2"),
        SnapshotMeta(30, 1, VOTERS),
        entries(31, 40, size=500),
    )
    log.close()


def test_a_segment_with_entries_past_the_snapshot_stays(log_dir: Path) -> None:
    log = RaftLog(log_dir, segment_bytes=8192)
    log.save(HardState(1, "n1"), None, entries(1, 40, size=150))  # one segment of its own
    for index in range(41, 60):
        log.save(None, None, entries(index, index, size=500))
    log.compact(SnapshotMeta(30, 1, VOTERS))
    log = reopened(log, log_dir, segment_bytes=8192)
    assert log.load()[2] == [*entries(31, 40, size=150), *entries(41, 59, size=500)]
    log.close()


def test_a_full_disk_saves_nothing_and_the_log_goes_on_after(
    log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = RaftLog(log_dir, segment_bytes=8192)
    log.save(HardState(1, "n1"), None, entries(1, 1))

    def full(fd: int, size: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with monkeypatch.context() as patch:
        patch.setattr(storage, "_zero_fill", full)
        with pytest.raises(StorageFailure, match="No space left"):
            log.save(HardState(2, None), None, entries(2, 20, size=500))  # needs a segment
    assert log.load() == (HardState(1, "n1"), None, entries(1, 1))
    assert not list(log_dir.glob("*.tmp"))
    log.save(HardState(2, None), None, entries(2, 20, size=500))  # room again
    log = reopened(log, log_dir, segment_bytes=8192)
    assert log.load() == (HardState(2, None), None, [*entries(1, 1), *entries(2, 20, size=500)])
    log.close()


def test_after_a_failed_sync_the_next_save_starts_a_new_segment(
    log: RaftLog, log_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log.save(HardState(1, "n1"), None, entries(1, 1))

    def failing(fd: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with monkeypatch.context() as patch:
        patch.setattr(os, "fdatasync", failing)
        with pytest.raises(StorageFailure, match="Input/output error"):
            log.save(None, None, entries(2, 2))
    # Whatever that segment holds after the failure, nothing more is written into it.
    log.save(None, None, entries(2, 3, term=2))
    assert len(segments(log_dir)) == 2
    log = reopened(log, log_dir)
    assert log.load() == (HardState(1, "n1"), None, [*entries(1, 1), *entries(2, 3, term=2)])
    log.close()


def write_legacy(
    path: Path,
    hard_state: HardState,
    snapshot: SnapshotMeta | None,
    kept: list[Entry],
    *,
    recovering_column: bool = True,
) -> None:
    """A `raft.db` holding this state, as versions before the segment log wrote it."""
    with sqlite3.connect(path) as db:
        recovering = ", recovering INTEGER NOT NULL DEFAULT 0" if recovering_column else ""
        db.execute(
            "CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER "
            f"NOT NULL, voted_for TEXT{recovering})"
        )
        db.execute(
            "CREATE TABLE entries (idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, "
            "kind INTEGER NOT NULL, data BLOB NOT NULL)"
        )
        db.execute(
            "CREATE TABLE snapshot (id INTEGER PRIMARY KEY CHECK (id = 0), last_index INTEGER "
            "NOT NULL, last_term INTEGER NOT NULL, voters BLOB NOT NULL)"
        )
        db.execute(
            "INSERT INTO hard_state (id, term, voted_for) VALUES (0, ?, ?)",
            (hard_state.term, hard_state.voted_for),
        )
        if recovering_column:
            db.execute("UPDATE hard_state SET recovering = ?", (hard_state.recovering,))
        if snapshot is not None:
            db.execute(
                "INSERT INTO snapshot VALUES (0, ?, ?, ?)",
                (snapshot.last_index, snapshot.last_term, encode_voters(snapshot.voters)),
            )
        db.executemany(
            "INSERT INTO entries VALUES (?, ?, ?, ?)",
            [(e.index, e.term, int(e.kind), e.data) for e in kept],
        )
    db.close()


def make_legacy(path: Path, *, recovering_column: bool = True) -> None:
    write_legacy(
        path,
        HardState(7, "n1", recovering=False),
        SnapshotMeta(4, 2, VOTERS),
        entries(5, 9, term=2),
        recovering_column=recovering_column,
    )


def test_a_legacy_raft_db_becomes_a_log_holding_the_same(tmp_path: Path) -> None:
    legacy = tmp_path / LEGACY_DB
    make_legacy(legacy)
    assert storage.exists(tmp_path)
    log = RaftLog(tmp_path / LOG_DIR, legacy=legacy)
    expected = (HardState(7, "n1"), SnapshotMeta(4, 2, VOTERS), entries(5, 9, term=2))
    assert log.load() == expected
    assert not legacy.exists()
    log.save(None, None, entries(10, 10, term=2))
    log.close()
    log = RaftLog(tmp_path / LOG_DIR, legacy=legacy)
    assert log.load()[2] == entries(5, 10, term=2)
    log.close()


def test_a_legacy_raft_db_is_copied_again_after_a_cut_short_copy(tmp_path: Path) -> None:
    legacy = tmp_path / LEGACY_DB
    make_legacy(legacy)
    staging = tmp_path / f"{LOG_DIR}.new"
    staging.mkdir()
    (staging / "00000001.log").write_bytes(b"half")
    log = RaftLog(tmp_path / LOG_DIR, legacy=legacy)
    assert log.load()[2] == entries(5, 9, term=2)
    log.close()


def test_a_legacy_log_from_before_recovering_existed_is_up_to_date(tmp_path: Path) -> None:
    legacy = tmp_path / LEGACY_DB
    make_legacy(legacy, recovering_column=False)
    log = RaftLog(tmp_path / LOG_DIR, legacy=legacy)
    assert log.load()[0] == HardState(7, "n1", recovering=False)
    log.close()


def test_a_damaged_segment_header_is_a_storage_failure(log: RaftLog, log_dir: Path) -> None:
    log.close()
    (segment,) = segments(log_dir)
    with open(segment, "r+b") as file:
        file.write(b"XXXX")
    reopened = RaftLog(log_dir)
    with pytest.raises(StorageFailure, match="not a log segment"):
        reopened.load()
