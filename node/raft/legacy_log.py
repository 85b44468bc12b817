"""The Raft log of versions before the segment log: `raft.db`, a SQLite database.

A node upgraded in place finds it in its data directory; `RaftLog` copies what it holds into
a new log, then removes it.
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from ringfs.node.durable import fsync_dir
from ringfs.node.raft.core import Entry, EntryKind, HardState, SnapshotMeta, decode_voters


def read(path: Path) -> tuple[HardState, SnapshotMeta | None, list[Entry]]:
    """The state a `raft.db` holds (one from before `recovering` existed was up to date)."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(hard_state)")]
        recovering = "recovering" if "recovering" in columns else "0"
        term, voted_for, flag = db.execute(
            f"SELECT term, voted_for, {recovering} FROM hard_state"
        ).fetchone()
        row = db.execute("SELECT last_index, last_term, voters FROM snapshot").fetchone()
        snapshot = None if row is None else SnapshotMeta(row[0], row[1], decode_voters(row[2]))
        entries = [
            Entry(term, idx, EntryKind(kind), bytes(data))
            for idx, term, kind, data in db.execute(
                "SELECT idx, term, kind, data FROM entries ORDER BY idx"
            )
        ]
    return HardState(term, voted_for, bool(flag)), snapshot, entries


def remove(legacy: Path) -> None:
    """The log now holds what `legacy` held."""
    for suffix in ("", "-wal", "-shm"):
        Path(f"{legacy}{suffix}").unlink(missing_ok=True)
    fsync_dir(legacy.parent)
