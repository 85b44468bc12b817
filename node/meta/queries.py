"""Read-only queries on the namespace database: what lookup, stat, readdir and the rest answer.

Plain functions of the rows, one per query and named after its OP; `MetaState.query` runs them
under its lock. They change nothing, so a query never needs the Raft log: the leader answers
from its own database once it knows that is current (see `ringfs.node.raft`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ringfs.node.errors import NodeError
from ringfs.node.meta import commands as cmd
from ringfs.node.meta.commands import Attr, BlockRef, Chunk, DirEntry, FsStats
from ringfs.node.meta.schema import INODE_COLUMNS, Inode, Tables, check_xattr_name

#: Most entries one ReadDir returns, whatever the limit asked: keeps replies far below the frame
#: limit even with 255-byte names. Callers page until they get an empty list.
READDIR_MAX = 1024
#: Most blocks one Blocks query (or clients one Clients query) lists: about 200 KiB of answer.
BLOCKS_MAX = 4096
#: `.` and `..` take the first two offsets of every directory; entries follow their cookies.
DOT_ENTRIES = 2


def answer(rows: Tables, q: cmd.Query) -> Any:
    """Answer a read-only query; `ringfs.node.meta.commands` gives each one's result type.

    Raises NodeError with the errno name a local filesystem would give.
    """
    return _HANDLERS[q.OP](rows, q)


def _lookup(rows: Tables, q: cmd.Lookup) -> Attr:
    if len(q.name) > cmd.NAME_MAX:
        raise NodeError("ENAMETOOLONG", "name too long")
    rows.dir(q.parent)
    ino = rows.entry(q.parent, q.name)
    if ino is None:
        raise NodeError("ENOENT", "no such entry")
    return rows.get(ino).attr()


def _getattr(rows: Tables, q: cmd.GetAttr) -> Attr:
    return rows.get(q.ino).attr()


def _readdir(rows: Tables, q: cmd.ReadDir) -> list[DirEntry]:
    directory = rows.dir(q.ino)
    if q.limit <= 0:
        raise NodeError("EINVAL", "limit must be positive")
    limit = min(q.limit, READDIR_MAX)
    dots = []
    if q.after < DOT_ENTRIES:
        # The root is its own parent; any other directory has exactly one entry naming it.
        parent = rows.one("SELECT parent FROM dentries WHERE ino = ?", q.ino)
        above = directory if parent is None else rows.get(parent)
        dots = [DirEntry(1, b".", directory.attr()), DirEntry(2, b"..", above.attr())]
        dots = dots[q.after : q.after + limit]
    found = rows.run(
        f"SELECT d.cookie, d.name, {INODE_COLUMNS} FROM dentries d "
        "JOIN inodes i ON i.ino = d.ino "
        "WHERE d.parent = ? AND d.cookie > ? ORDER BY d.cookie LIMIT ?",
        q.ino,
        max(q.after - DOT_ENTRIES, 0),
        limit - len(dots),
    )
    entries = [DirEntry(row[0] + DOT_ENTRIES, row[1], Inode(*row[2:]).attr()) for row in found]
    return dots + entries


def _readlink(rows: Tables, q: cmd.ReadLink) -> bytes:
    target = rows.get(q.ino).target
    if target is None:
        raise NodeError("EINVAL", "not a symlink")
    return target


def _getxattr(rows: Tables, q: cmd.GetXattr) -> bytes:
    check_xattr_name(q.name)
    rows.get(q.ino)
    value = rows.xattr(q.ino, q.name)
    if value is None:
        raise NodeError("ENODATA", "no such xattr")
    return value


def _listxattr(rows: Tables, q: cmd.ListXattr) -> list[bytes]:
    rows.get(q.ino)
    return [
        row[0] for row in rows.run("SELECT name FROM xattrs WHERE ino = ? ORDER BY name", q.ino)
    ]


def _read_chunks(rows: Tables, q: cmd.ReadChunks) -> tuple[Attr, list[Chunk]]:
    node = rows.get(q.ino)
    if node.is_dir:
        raise NodeError("EISDIR", "a directory has no data")
    if q.limit <= 0:
        raise NodeError("EINVAL", "limit must be positive")
    if q.unless_version and q.unless_version == node.version:
        return node.attr(), []  # the caller holds this version's map
    sql = (
        "SELECT c.idx, c.block_id, c.length, c.checksum, COALESCE(b.data, x''), "
        "COALESCE(t.data, x'') FROM chunks c "
        "LEFT JOIN inline_blocks b ON b.block_id = c.block_id "
        "LEFT JOIN chunk_tails t ON t.ino = c.ino AND t.idx = c.idx "
        "WHERE c.ino = ? AND c.idx >= ? ORDER BY c.idx LIMIT ?"
    )
    chunks, tails = [], 0
    for row in rows.run(sql, q.ino, q.first, min(q.limit, cmd.CHUNKS_PER_MESSAGE)):
        chunks.append(Chunk(*row))
        tails += len(row[5])
        if tails >= cmd.TAIL_PAGE_BYTES:
            break  # the caller asks for the rest (`Cluster.read_chunks`)
    return node.attr(), chunks


def _fsinfo(rows: Tables, q: cmd.FsInfo) -> FsStats:
    inodes = rows.one("SELECT COUNT(*) FROM inodes")
    stored = rows.one("SELECT COALESCE(SUM(length), 0) FROM chunks")
    garbage = rows.counter("garbage_blocks"), rows.counter("garbage_bytes")
    return FsStats(rows.counter("chunk_size"), inodes, stored, *garbage)


def _garbage(rows: Tables, q: cmd.Garbage) -> list[bytes]:
    if q.limit <= 0:
        raise NodeError("EINVAL", "limit must be positive")
    sql = "SELECT block_id FROM garbage ORDER BY seq LIMIT ?"
    return [row[0] for row in rows.run(sql, q.limit)]


def _blocks(rows: Tables, q: cmd.Blocks) -> list[BlockRef]:
    if q.limit <= 0:
        raise NodeError("EINVAL", "limit must be positive")
    sql = (
        "SELECT c.block_id, c.checksum FROM chunks c WHERE c.block_id BETWEEN ? AND ? "
        "AND NOT EXISTS (SELECT 1 FROM inline_blocks b WHERE b.block_id = c.block_id) "
        "GROUP BY c.block_id ORDER BY c.block_id LIMIT ?"
    )
    return [BlockRef(*row) for row in rows.run(sql, q.first, q.last, min(q.limit, BLOCKS_MAX))]


#: The tables that keep rows for a client, by its id.
_CLIENT_TABLES = ("clients", "inode_ranges", "delegations", "orphans")


def _clients(rows: Tables, q: cmd.Clients) -> list[bytes]:
    if q.limit <= 0:
        raise NodeError("EINVAL", "limit must be positive")
    union = " UNION ".join(f"SELECT client_id FROM {t} WHERE client_id > ?" for t in _CLIENT_TABLES)
    params = (q.after,) * len(_CLIENT_TABLES) + (min(q.limit, BLOCKS_MAX),)
    return [row[0] for row in rows.run(f"{union} ORDER BY 1 LIMIT ?", *params)]


_HANDLERS: dict[str, Callable[[Tables, Any], Any]] = {
    cmd.Lookup.OP: _lookup,
    cmd.GetAttr.OP: _getattr,
    cmd.ReadDir.OP: _readdir,
    cmd.ReadLink.OP: _readlink,
    cmd.GetXattr.OP: _getxattr,
    cmd.ListXattr.OP: _listxattr,
    cmd.ReadChunks.OP: _read_chunks,
    cmd.FsInfo.OP: _fsinfo,
    cmd.Garbage.OP: _garbage,
    cmd.Blocks.OP: _blocks,
    cmd.Clients.OP: _clients,
}
