"""`RaftLog`: what `save` and `compact` got is what `load` gives back, and a failing disk
is a `StorageFailure`, never a half-saved state."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from ringfs.node.errors import StorageFailure
from ringfs.node.raft.core import NEW_MEMBER, Entry, EntryKind, HardState, SnapshotMeta
from ringfs.node.raft.storage import RaftLog


def entries(first: int, last: int, term: int = 1) -> list[Entry]:
    return [Entry(term, i, EntryKind.COMMAND, b"e%d" % i) for i in range(first, last + 1)]


def test_saved_state_survives_a_reopen(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "raft.db")
    log.save(HardState(1, "n1"), None, entries(1, 5))
    log.save(HardState(2, "n2"), 4, entries(4, 6, term=2))  # a conflict from index 4
    log.compact(SnapshotMeta(2, 1, ("n1", "n2", "n3")))
    log.close()
    reopened = RaftLog(tmp_path / "raft.db")
    hard_state, snapshot, kept = reopened.load()
    assert hard_state == HardState(2, "n2")
    assert snapshot == SnapshotMeta(2, 1, ("n1", "n2", "n3"))
    assert kept == [*entries(3, 3), *entries(4, 6, term=2)]
    reopened.close()


def test_a_full_disk_is_a_storage_failure_and_saves_nothing(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "raft.db")
    log.save(HardState(1, "n1"), None, entries(1, 1))
    (pages,) = log._db.execute("PRAGMA page_count").fetchone()
    log._db.execute(f"PRAGMA max_page_count = {pages}")
    big = [Entry(1, i, EntryKind.COMMAND, b"x" * 4000) for i in range(2, 40)]
    with pytest.raises(StorageFailure, match="full"):
        log.save(HardState(2, None), None, big)
    assert log.load() == (HardState(1, "n1"), None, entries(1, 1))
    log.close()


def test_a_new_log_is_a_member_no_leader_brought_up_to_date(tmp_path: Path) -> None:
    log = RaftLog(tmp_path / "raft.db")
    assert log.load() == (NEW_MEMBER, None, [])
    log.save(HardState(3, "n2", recovering=False), None, ())
    log.close()
    assert RaftLog(tmp_path / "raft.db").load()[0] == HardState(3, "n2")


def test_a_log_from_before_recovering_existed_is_up_to_date(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "raft.db") as db:
        db.execute(
            "CREATE TABLE hard_state (id INTEGER PRIMARY KEY CHECK (id = 0), "
            "term INTEGER NOT NULL, voted_for TEXT)"
        )
        db.execute("INSERT INTO hard_state VALUES (0, 7, 'n1')")
    db.close()
    log = RaftLog(tmp_path / "raft.db")
    assert log.load()[0] == HardState(7, "n1", recovering=False)
    log.close()
