"""The durable Raft state of one node: term, vote, log entries and the snapshot's place.

Kept in its own SQLite database (`raft.db`, WAL, synchronous=FULL), separate from the
metadata it replicates. `save` writes everything one `Ready` asks to persist in a single
transaction, so one fsync covers a whole group of proposals (group commit); Raft requires it
to be on disk before the node answers or sends anything that depends on it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from ringfs.node.errors import StorageFailure
from ringfs.node.raft.core import (
    Entry,
    EntryKind,
    HardState,
    SnapshotMeta,
    decode_voters,
    encode_voters,
)

# A new raft.db is a member that no leader has brought up to date yet (see `NEW_MEMBER`).
_SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS hard_state (
    id INTEGER PRIMARY KEY CHECK (id = 0), term INTEGER NOT NULL, voted_for TEXT,
    recovering INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS entries (
    idx INTEGER PRIMARY KEY, term INTEGER NOT NULL, kind INTEGER NOT NULL, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS snapshot (
    id INTEGER PRIMARY KEY CHECK (id = 0), last_index INTEGER NOT NULL,
    last_term INTEGER NOT NULL, voters BLOB NOT NULL);
INSERT OR IGNORE INTO hard_state VALUES (0, 0, NULL, 1);
COMMIT;
"""
# raft.db from before `recovering` existed: those members were up to date.
_ADD_RECOVERING = "ALTER TABLE hard_state ADD COLUMN recovering INTEGER NOT NULL DEFAULT 0"


class RaftLog:
    """`RaftStorage` on SQLite. Blocking: the shell calls it from a worker thread, except for
    a follower's `save` (see `RaftNode._save`)."""

    def __init__(self, path: Path | str) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode = WAL")
        # FULL: with WAL, NORMAL would skip the fsync at commit, and Raft must not forget a
        # vote or an acknowledged entry across a crash.
        self._db.execute("PRAGMA synchronous = FULL")
        columns = [row[1] for row in self._db.execute("PRAGMA table_info(hard_state)")]
        if columns and "recovering" not in columns:
            self._db.execute(_ADD_RECOVERING)
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def load(self) -> tuple[HardState, SnapshotMeta | None, list[Entry]]:
        """Everything saved: the node restarts from exactly this."""
        with self._lock:
            term, voted_for, recovering = self._db.execute(
                "SELECT term, voted_for, recovering FROM hard_state"
            ).fetchone()
            row = self._db.execute("SELECT last_index, last_term, voters FROM snapshot").fetchone()
            snapshot = None if row is None else SnapshotMeta(row[0], row[1], decode_voters(row[2]))
            entries = [
                Entry(term, idx, EntryKind(kind), bytes(data))
                for idx, term, kind, data in self._db.execute(
                    "SELECT idx, term, kind, data FROM entries ORDER BY idx"
                )
            ]
        return HardState(term, voted_for, bool(recovering)), snapshot, entries

    def save(
        self,
        hard_state: HardState | None,
        truncate_from: int | None,
        append: Sequence[Entry],
    ) -> None:
        """Persist a Ready's state changes in one transaction; durable when this returns."""
        if hard_state is None and truncate_from is None and not append:
            return
        with self._lock, self._transaction():
            if hard_state is not None:
                self._db.execute(
                    "UPDATE hard_state SET term = ?, voted_for = ?, recovering = ?",
                    (hard_state.term, hard_state.voted_for, hard_state.recovering),
                )
            if truncate_from is not None:
                self._db.execute("DELETE FROM entries WHERE idx >= ?", (truncate_from,))
            self._db.executemany(
                "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?)",
                [(e.index, e.term, int(e.kind), e.data) for e in append],
            )

    def compact(self, meta: SnapshotMeta) -> None:
        """The state machine holds everything up to `meta.last_index`: drop those entries."""
        with self._lock, self._transaction():
            self._db.execute("DELETE FROM entries WHERE idx <= ?", (meta.last_index,))
            self._db.execute(
                "INSERT OR REPLACE INTO snapshot VALUES (0, ?, ?, ?)",
                (meta.last_index, meta.last_term, encode_voters(meta.voters)),
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE ... COMMIT (or ROLLBACK on error). A database error is the disk
        failing: Raft cannot go on without its log, so it becomes `StorageFailure`."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageFailure(f"raft log {self._path}: {exc}") from exc
