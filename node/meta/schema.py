"""The namespace database: its schema and row-level access, for the state machine in `meta`.

Everything here reads or writes rows inside the transaction `MetaState.apply_batch` opened; none
of it decides anything about POSIX semantics. Inode numbers and directory cookies come from
counters in the database, never reused, so replicas stay identical.
"""

from __future__ import annotations

import sqlite3
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringfs.node.errors import NodeError
from ringfs.node.meta import commands as cmd
from ringfs.node.meta.commands import Attr
from ringfs.node.meta.effects import DIR_BLOCKS

#: Bumped when the schema changes; `_UPGRADES` brings a database of an earlier one forward.
SCHEMA_VERSION = 3

SCHEMA = """
BEGIN;
CREATE TABLE IF NOT EXISTS inodes (
    ino INTEGER PRIMARY KEY, mode INTEGER NOT NULL, nlink INTEGER NOT NULL,
    uid INTEGER NOT NULL, gid INTEGER NOT NULL, rdev INTEGER NOT NULL, size INTEGER NOT NULL,
    atime_ns INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, ctime_ns INTEGER NOT NULL,
    version INTEGER NOT NULL, target BLOB);
CREATE TABLE IF NOT EXISTS dentries (
    parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL, cookie INTEGER NOT NULL,
    PRIMARY KEY (parent, name)) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS dentries_by_cookie ON dentries (parent, cookie);
CREATE INDEX IF NOT EXISTS dentries_by_ino ON dentries (ino);
CREATE TABLE IF NOT EXISTS xattrs (
    ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (ino, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS chunks (
    ino INTEGER NOT NULL, idx INTEGER NOT NULL, block_id BLOB NOT NULL,
    length INTEGER NOT NULL, checksum BLOB NOT NULL, PRIMARY KEY (ino, idx)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS chunks_by_block ON chunks (block_id);
CREATE TABLE IF NOT EXISTS inline_blocks (block_id BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chunk_tails (
    ino INTEGER NOT NULL, idx INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY (ino, idx))
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS garbage (
    seq INTEGER PRIMARY KEY, block_id BLOB NOT NULL UNIQUE, length INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS abandoned (block_id BLOB PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orphans (ino INTEGER PRIMARY KEY, client_id BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sessions (
    client_id BLOB NOT NULL, seq INTEGER NOT NULL, outcome BLOB NOT NULL,
    PRIMARY KEY (client_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS clients (client_id BLOB PRIMARY KEY, acked_below INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inode_ranges (
    client_id BLOB PRIMARY KEY, first INTEGER NOT NULL, stop INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delegations (dir INTEGER PRIMARY KEY, client_id BLOB NOT NULL);
INSERT OR IGNORE INTO counters VALUES
    ('next_ino', 2), ('next_cookie', 1), ('chunk_size', 0), ('applied_index', 0),
    ('garbage_blocks', 0), ('garbage_bytes', 0);
COMMIT;
"""

#: The script that takes a database from each earlier schema to the next, in one transaction
#: (a crash leaves it as it was, and the next open runs it again). Schema 3 keeps inline
#: blocks in a table with rowids: in a WITHOUT ROWID table a row lives in its primary key's
#: B-tree, and inserting blocks of kilobytes at random keys moved them about, which made the
#: insert three times dearer (55 against 18 µs for 4 KiB).
_UPGRADES = {
    2: """
BEGIN;
ALTER TABLE inline_blocks RENAME TO inline_blocks_2;
CREATE TABLE inline_blocks (block_id BLOB PRIMARY KEY, data BLOB NOT NULL);
INSERT INTO inline_blocks SELECT block_id, data FROM inline_blocks_2;
DROP TABLE inline_blocks_2;
PRAGMA user_version = 3;
COMMIT;
""",
}
TABLES = (
    "inodes", "dentries", "xattrs", "chunks", "inline_blocks", "chunk_tails", "garbage",
    "abandoned", "counters", "sessions", "clients", "inode_ranges", "delegations", "orphans",
)  # fmt: skip
# The columns of an `_Inode`, from `inodes i`.
INODE_COLUMNS = (
    "i.ino, i.mode, i.nlink, i.uid, i.gid, i.rdev, i.size, i.atime_ns, i.mtime_ns, i.ctime_ns, "
    "i.version, i.target, (SELECT COALESCE(SUM(c.length), 0) FROM chunks c WHERE c.ino = i.ino), "
    "(SELECT COUNT(*) FROM xattrs x WHERE x.ino = i.ino)"
)


@dataclass(slots=True)
class Inode:
    """A mutable copy of an inodes row: load, change, `Tables.save`."""

    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    version: int
    target: bytes | None
    #: Sum of the chunk lengths, for st_blocks; not a column of its own.
    stored: int = 0
    #: How many xattrs it has; not a column of its own.
    xattrs: int = 0

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def touch(self, now_ns: int) -> None:
        """An entry was added or removed: a directory's mtime and ctime move."""
        self.mtime_ns = self.ctime_ns = now_ns

    def attr(self) -> Attr:
        blocks = DIR_BLOCKS if self.is_dir else -(-self.stored // 512)
        return Attr(
            self.ino, self.mode, self.nlink, self.uid, self.gid, self.rdev, self.size, blocks,
            self.atime_ns, self.mtime_ns, self.ctime_ns, self.version, self.xattrs,
        )  # fmt: skip


@dataclass
class Changes:
    """The inodes and the entries (parent, name) that writes touched since the last `take`."""

    inodes: set[int] = field(default_factory=set)
    entries: set[tuple[int, bytes]] = field(default_factory=set)

    def update(self, other: Changes) -> None:
        """Note what `other` noted too."""
        self.inodes |= other.inodes
        self.entries |= other.entries

    def take(self) -> tuple[list[int], list[tuple[int, bytes]]]:
        """What was noted, sorted (replicas list the same), and forget it."""
        taken = sorted(self.inodes), sorted(self.entries)
        self.clear()
        return taken

    def clear(self) -> None:
        self.inodes.clear()
        self.entries.clear()


def open_database(
    path: Path | str, *, synchronous: bool = True, auto_checkpoint: bool = True
) -> sqlite3.Connection:
    """Open (creating if need be) a namespace database, upgraded to the current schema;
    NodeError for a foreign schema.

    `synchronous=False` skips the fsync at each commit (WAL, synchronous=NORMAL): for a
    replica whose commands are durable in the Raft log, which replays whatever a power loss
    took back; a snapshot syncs the WAL before the log is compacted (`MetaMachine.snapshot`).

    `auto_checkpoint=False` leaves copying the WAL into the database to the caller
    (`MetaMachine.checkpoint`, in a worker thread). SQLite would otherwise do it inside the
    COMMIT that fills the WAL past 1000 pages: megabytes written and two fsyncs, 10 to 20 ms
    on the thread that commits, which for a replica is its event loop.

    Temporary storage is kept in memory: every log entry and every command in it runs in a
    SAVEPOINT, whose statement journal SQLite would otherwise write to a temporary file
    (about 28 `pwrite`s per small file's batch, an eighth of the CPU time of applying it).
    """
    db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(f"PRAGMA synchronous = {'FULL' if synchronous else 'NORMAL'}")
    db.execute("PRAGMA temp_store = MEMORY")
    if not auto_checkpoint:
        db.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        while version in _UPGRADES:
            db.executescript(_UPGRADES[version])
            version = db.execute("PRAGMA user_version").fetchone()[0]
    except BaseException:
        db.close()  # an upgrade cut short is rolled back
        raise
    if version not in (0, SCHEMA_VERSION):
        db.close()
        raise NodeError("EINVAL", f"{path}: metadata schema {version}, need {SCHEMA_VERSION}")
    db.executescript(SCHEMA)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    return db


class Tables:
    """Row access to inodes, entries, counters and xattrs of one database connection.

    Every write to an inode or an entry is noted in `changes`, for the mounts that cache them
    (see `ringfs.node.meta.feed`).
    """

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db
        self.changes = Changes()

    def run(self, sql: str, *params: object) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def one(self, sql: str, *params: object) -> Any:
        """The first column of the first row, or None when there is no row."""
        row = self.db.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def counter(self, name: str) -> int:
        return int(self.one("SELECT value FROM counters WHERE name = ?", name))

    def set_counter(self, name: str, value: int) -> None:
        self.run("UPDATE counters SET value = ? WHERE name = ?", value, name)

    def next(self, name: str) -> int:
        """Take the next value of a counter (inode numbers, cookies): never reused."""
        value = self.counter(name)
        self.set_counter(name, value + 1)
        return value

    def get(self, ino: int) -> Inode:
        row = self.db.execute(f"SELECT {INODE_COLUMNS} FROM inodes i WHERE i.ino = ?", (ino,))
        row = row.fetchone()
        if row is None:
            raise NodeError("ENOENT", f"no inode {ino}")
        return Inode(*row)

    def dir(self, ino: int) -> Inode:
        node = self.get(ino)
        if not node.is_dir:
            raise NodeError("ENOTDIR", f"inode {ino} is not a directory")
        return node

    def insert(self, node: Inode) -> None:
        self.changes.inodes.add(node.ino)
        self.run(
            "INSERT INTO inodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            node.ino, node.mode, node.nlink, node.uid, node.gid, node.rdev, node.size,
            node.atime_ns, node.mtime_ns, node.ctime_ns, node.version, node.target,
        )  # fmt: skip

    def save(self, *nodes: Inode) -> None:
        for node in nodes:
            self.changes.inodes.add(node.ino)
            self.run(
                "UPDATE inodes SET mode = ?, nlink = ?, uid = ?, gid = ?, size = ?, "
                "atime_ns = ?, mtime_ns = ?, ctime_ns = ?, version = ? WHERE ino = ?",
                node.mode, node.nlink, node.uid, node.gid, node.size,
                node.atime_ns, node.mtime_ns, node.ctime_ns, node.version, node.ino,
            )  # fmt: skip

    def entry(self, parent: int, name: bytes) -> int | None:
        ino = self.one("SELECT ino FROM dentries WHERE parent = ? AND name = ?", parent, name)
        return None if ino is None else int(ino)

    def existing_entry(self, parent: int, name: bytes) -> tuple[Inode, Inode]:
        """The directory and the inode of an entry that must exist."""
        check_name(name)
        directory = self.dir(parent)
        ino = self.entry(parent, name)
        if ino is None:
            raise NodeError("ENOENT", "no such entry")
        return directory, self.get(ino)

    def new_entry_dir(self, parent: int, name: bytes) -> Inode:
        """The directory a new entry goes in; EEXIST if the name is taken."""
        directory = self.dir(parent)
        if self.entry(parent, name) is not None:
            raise NodeError("EEXIST", "entry exists")
        return directory

    def delete(self, ino: int) -> None:
        """Delete an inode row and its xattrs (its chunks are the caller's)."""
        self.changes.inodes.add(ino)
        self.run("DELETE FROM xattrs WHERE ino = ?", ino)
        self.run("DELETE FROM inodes WHERE ino = ?", ino)

    def add_entry(self, parent: int, name: bytes, ino: int) -> None:
        self.changes.entries.add((parent, name))
        cookie = self.next("next_cookie")
        self.run("INSERT INTO dentries VALUES (?, ?, ?, ?)", parent, name, ino, cookie)

    def remove_entry(self, parent: int, name: bytes) -> None:
        self.changes.entries.add((parent, name))
        self.run("DELETE FROM dentries WHERE parent = ? AND name = ?", parent, name)

    def has_entries(self, ino: int) -> bool:
        return self.one("SELECT 1 FROM dentries WHERE parent = ? LIMIT 1", ino) is not None

    def xattr(self, ino: int, name: bytes) -> bytes | None:
        value = self.one("SELECT value FROM xattrs WHERE ino = ? AND name = ?", ino, name)
        return None if value is None else bytes(value)


def check_name(name: bytes) -> None:
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise NodeError("EINVAL", f"invalid entry name {name!r}")
    if len(name) > cmd.NAME_MAX:
        raise NodeError("ENAMETOOLONG", "entry name too long")


def check_xattr_name(name: bytes) -> None:
    """Raises NodeError for an empty or over-long xattr name."""
    if not name:
        raise NodeError("EINVAL", "empty xattr name")
    if len(name) > cmd.XATTR_NAME_MAX:
        raise NodeError("ERANGE", "xattr name too long")
