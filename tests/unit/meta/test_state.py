"""The metadata state machine on SQLite: POSIX semantics, batches, sessions, determinism."""

from __future__ import annotations

import dataclasses
import hashlib
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfs.node.checksum import checksum
from ringfs.node.errors import NodeError
from ringfs.node.meta import commands
from ringfs.node.meta import state as meta_module
from ringfs.node.meta.commands import (
    INLINE_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    TAIL_MAX,
    XATTR_CREATE,
    XATTR_REPLACE,
    Abandon,
    Attr,
    Chunk,
    ChunkUpdate,
    Command,
    CommitChunks,
    DirEntry,
    Entry,
    ForgetGarbage,
    FsInfo,
    FsStats,
    Garbage,
    GetAttr,
    GetXattr,
    Init,
    Link,
    ListXattr,
    Lookup,
    Mkdir,
    Mknod,
    OpenSession,
    Outcome,
    Purge,
    ReadChunks,
    ReadDir,
    ReadLink,
    RemoveXattr,
    Rename,
    Rmdir,
    Setattr,
    SetXattr,
    Symlink,
    Unlink,
    decode_result,
)
from ringfs.node.meta.queries import DOT_ENTRIES, READDIR_MAX
from ringfs.node.meta.state import MetaState

CS = 4096  # chunk size of every test filesystem
T0 = 1_000  # the Init time; later commands use larger times
UID, GID = 1000, 100
REG = stat.S_IFREG | 0o644
SUM = bytes(32)


def block(n: int) -> bytes:
    return n.to_bytes(16, "big")


def chunk(idx: int, n: int, length: int = CS) -> Chunk:
    return Chunk(idx, block(n), length, SUM)


def new(c: Chunk) -> ChunkUpdate:
    """An update of a chunk that had no block before."""
    return ChunkUpdate(c, b"", 0)


def blind(
    meta: MetaState, ino: int, chunks: tuple[Chunk, ...], size: int, now: int = T0
) -> CommitChunks:
    """A commit built on the chunks as they are now, as a client that just read them writes."""
    try:
        current = {c.idx: c for c in meta.query(ReadChunks(ino, 0, 100))[1]}
    except NodeError:
        current = {}
    updates = []
    for c in chunks:
        base = current.get(c.idx)
        updates.append(
            ChunkUpdate(c, b"", 0) if base is None else ChunkUpdate(c, base.identity, base.length)
        )
    return CommitChunks(ino, tuple(updates), size, None, None, None, None, now)


@pytest.fixture
def meta(tmp_path: Path) -> Iterator[MetaState]:
    with MetaState(tmp_path / "meta.db") as state:
        state.apply_batch([Entry(Init(CS, 0, 0, T0))])
        yield state


# --- helpers ----------------------------------------------------------------------------------


def ok(meta: MetaState, command: Command) -> Any:
    """Apply one command that must succeed; return its decoded result."""
    [outcome] = meta.apply_batch([Entry(command)])
    assert outcome.error is None, outcome
    return decode_result(command, outcome.result)


def fails(meta: MetaState, command: Command, name: str) -> None:
    """Apply one command that must fail with errno ``name`` and change nothing."""
    before = meta.dump()
    [outcome] = meta.apply_batch([Entry(command)])
    assert outcome == Outcome(None, name)
    assert meta.dump() == before


def open_sessions(meta: MetaState, *clients: bytes) -> None:
    for client in clients:
        [outcome] = meta.apply_batch([Entry(OpenSession(), client)])
        assert outcome.error is None


def query_fails(meta: MetaState, query: Any, name: str) -> None:
    with pytest.raises(NodeError) as info:
        meta.query(query)
    assert info.value.name == name


def mkdir(meta: MetaState, parent: int, name: bytes, mode: int = 0o755, now: int = T0) -> int:
    attr: Attr = ok(meta, Mkdir(parent, name, mode, UID, GID, now))
    return attr.ino


def mkfile(meta: MetaState, parent: int, name: bytes, now: int = T0) -> int:
    attr: Attr = ok(meta, Mknod(parent, name, REG, 0, UID, GID, now))
    return attr.ino


def attr(meta: MetaState, ino: int) -> Attr:
    result: Attr = meta.query(GetAttr(ino))
    return result


def listing(
    meta: MetaState, ino: int, after: int = DOT_ENTRIES, limit: int = 1000
) -> list[DirEntry]:
    """A directory's entries without `.` and `..` (which come first, at offsets 1 and 2)."""
    result: list[DirEntry] = meta.query(ReadDir(ino, after, limit))
    return result


def table(meta: MetaState, name: str) -> list[tuple[Any, ...]]:
    [rows] = [rows for table, rows in meta.dump() if table == name]
    return rows


def garbage_backlog(meta: MetaState) -> tuple[int, int]:
    stats: FsStats = meta.query(FsInfo())
    return stats.garbage_blocks, stats.garbage_bytes


def names(meta: MetaState, ino: int) -> list[bytes]:
    return [entry.name for entry in listing(meta, ino)]


def lookup_ino(meta: MetaState, parent: int, name: bytes) -> int:
    result: Attr = meta.query(Lookup(parent, name))
    return result.ino


# --- init and creation ------------------------------------------------------------------------


def test_init_creates_root_once(tmp_path: Path) -> None:
    with MetaState(tmp_path / "m.db") as meta:
        query_fails(meta, GetAttr(ROOT_INO), "ENOENT")
        assert meta.query(FsInfo()) == FsStats(0, 0, 0, 0, 0)
        fails(meta, Init(0, 0, 0, T0), "EINVAL")
        ok(meta, Init(CS, 5, 6, T0))
        root = attr(meta, ROOT_INO)
        assert (root.mode, root.nlink, root.uid, root.gid) == (stat.S_IFDIR | 0o755, 2, 5, 6)
        assert (root.size, root.blocks, root.mtime_ns, root.ctime_ns) == (4096, 8, T0, T0)
        before = meta.dump()
        ok(meta, Init(CS * 2, 7, 8, T0 + 1))
        assert meta.dump() == before
        assert meta.query(FsInfo()) == FsStats(CS, 1, 0, 0, 0)


def test_mknod_regular_file(meta: MetaState) -> None:
    created: Attr = ok(meta, Mknod(ROOT_INO, b"f", REG, 0, UID, GID, T0 + 5))
    assert created.ino > ROOT_INO
    assert (created.mode, created.nlink, created.uid, created.gid) == (REG, 1, UID, GID)
    assert (created.size, created.blocks, created.version) == (0, 0, 0)
    assert created.atime_ns == created.mtime_ns == created.ctime_ns == T0 + 5
    assert meta.query(Lookup(ROOT_INO, b"f")) == created == attr(meta, created.ino)
    root = attr(meta, ROOT_INO)
    assert (root.nlink, root.mtime_ns, root.ctime_ns) == (2, T0 + 5, T0 + 5)
    # File type 0 means a regular file, as for mknod(2).
    assert ok(meta, Mknod(ROOT_INO, b"g", 0o600, 0, UID, GID, T0)).mode == REG & ~0o777 | 0o600


@pytest.mark.parametrize(
    ("kind", "rdev"),
    [(stat.S_IFIFO, 0), (stat.S_IFSOCK, 0), (stat.S_IFCHR, 0x0801), (stat.S_IFBLK, 0x0801)],
)
def test_mknod_special_files(meta: MetaState, kind: int, rdev: int) -> None:
    created: Attr = ok(meta, Mknod(ROOT_INO, b"s", kind | 0o640, 0x0801, UID, GID, T0))
    assert created.mode == kind | 0o640
    assert created.rdev == rdev  # only device nodes keep rdev


def test_mknod_rejects_directories_and_symlinks(meta: MetaState) -> None:
    fails(meta, Mknod(ROOT_INO, b"d", stat.S_IFDIR | 0o755, 0, UID, GID, T0), "EPERM")
    fails(meta, Mknod(ROOT_INO, b"l", stat.S_IFLNK | 0o777, 0, UID, GID, T0), "EINVAL")
    fails(meta, Mknod(ROOT_INO, b"f", REG, 0, 2**32, GID, T0), "EINVAL")


@pytest.mark.parametrize("mode", [-1, 0o200000, 2**63 - 1, -(2**63)])
def test_a_mode_out_of_range_is_einval(meta: MetaState, mode: int) -> None:
    """Found by the live fuzzer: such a mode made every replica fail the command (EIO)."""
    fails(meta, Mknod(ROOT_INO, b"f", mode, 0, UID, GID, T0), "EINVAL")
    fails(meta, Mkdir(ROOT_INO, b"d", mode, UID, GID, T0), "EINVAL")
    ino = mkfile(meta, ROOT_INO, b"g")
    fails(meta, Setattr(ino, mode, None, None, None, None, None, T0), "EINVAL")
    fails(meta, CommitChunks(ino, (), 0, None, None, None, mode, T0), "EINVAL")


@pytest.mark.parametrize(
    ("name", "error"),
    [
        (b"", "EINVAL"),
        (b".", "EINVAL"),
        (b"..", "EINVAL"),
        (b"a/b", "EINVAL"),
        (b"a\0b", "EINVAL"),
        (b"x" * 256, "ENAMETOOLONG"),
    ],
)
def test_bad_names_are_rejected_everywhere(meta: MetaState, name: bytes, error: str) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    f = mkfile(meta, ROOT_INO, b"f")
    for command in (
        Mknod(ROOT_INO, name, REG, 0, UID, GID, T0),
        Mkdir(ROOT_INO, name, 0o755, UID, GID, T0),
        Symlink(ROOT_INO, name, b"t", UID, GID, T0),
        Link(f, ROOT_INO, name, T0),
        Unlink(ROOT_INO, name, T0),
        Rmdir(ROOT_INO, name, T0),
        Rename(ROOT_INO, name, d, b"x", 0, T0),
        Rename(ROOT_INO, b"f", d, name, 0, T0),
    ):
        fails(meta, command, error)


def test_longest_name_is_fine(meta: MetaState) -> None:
    ino = mkfile(meta, ROOT_INO, b"x" * 255)
    assert lookup_ino(meta, ROOT_INO, b"x" * 255) == ino
    query_fails(meta, Lookup(ROOT_INO, b"x" * 256), "ENAMETOOLONG")


def test_create_errors(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    mkdir(meta, ROOT_INO, b"d")
    for name in (b"f", b"d"):
        fails(meta, Mknod(ROOT_INO, name, REG, 0, UID, GID, T0), "EEXIST")
        fails(meta, Mkdir(ROOT_INO, name, 0o755, UID, GID, T0), "EEXIST")
        fails(meta, Symlink(ROOT_INO, name, b"t", UID, GID, T0), "EEXIST")
    fails(meta, Mknod(999, b"x", REG, 0, UID, GID, T0), "ENOENT")
    fails(meta, Mkdir(f, b"x", 0o755, UID, GID, T0), "ENOTDIR")
    query_fails(meta, Lookup(ROOT_INO, b"nothing"), "ENOENT")
    query_fails(meta, Lookup(f, b"x"), "ENOTDIR")
    query_fails(meta, Lookup(999, b"x"), "ENOENT")


def test_mkdir_counts_links(meta: MetaState) -> None:
    created: Attr = ok(meta, Mkdir(ROOT_INO, b"d", 0o7777, UID, GID, T0 + 1))
    # As on Linux, mkdir ignores set-id bits in the mode (the sticky bit stays).
    assert created.mode == stat.S_IFDIR | 0o1777
    assert (created.nlink, created.size, created.blocks) == (2, 4096, 8)
    mkdir(meta, created.ino, b"sub")
    mkfile(meta, created.ino, b"file")
    assert attr(meta, created.ino).nlink == 3
    assert attr(meta, ROOT_INO).nlink == 3


def test_setgid_directory_passes_its_group_on(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"shared")
    ok(meta, Setattr(d, 0o2775, None, 50, None, None, None, T0))
    file: Attr = ok(meta, Mknod(d, b"f", REG | stat.S_ISGID, 0, UID, GID, T0))
    sub: Attr = ok(meta, Mkdir(d, b"sub", 0o755, UID, GID, T0))
    link: Attr = ok(meta, Symlink(d, b"l", b"f", UID, GID, T0))
    assert (file.gid, sub.gid, link.gid) == (50, 50, 50)
    assert sub.mode == stat.S_IFDIR | stat.S_ISGID | 0o755
    assert file.mode == REG | stat.S_ISGID  # kept as given
    plain: Attr = ok(meta, Mkdir(ROOT_INO, b"plain", 0o755, UID, GID, T0))
    assert (plain.gid, plain.mode & stat.S_ISGID) == (GID, 0)


def test_symlink(meta: MetaState) -> None:
    created: Attr = ok(meta, Symlink(ROOT_INO, b"l", b"../some/target", UID, GID, T0))
    assert (created.mode, created.size, created.nlink) == (stat.S_IFLNK | 0o777, 14, 1)
    assert meta.query(ReadLink(created.ino)) == b"../some/target"
    assert ok(meta, Symlink(ROOT_INO, b"long", b"t" * 4095, UID, GID, T0)).size == 4095
    fails(meta, Symlink(ROOT_INO, b"x", b"", UID, GID, T0), "ENOENT")
    fails(meta, Symlink(ROOT_INO, b"x", b"t" * 4096, UID, GID, T0), "ENAMETOOLONG")
    fails(meta, Symlink(ROOT_INO, b"x", b"a\0b", UID, GID, T0), "EINVAL")
    query_fails(meta, ReadLink(mkfile(meta, ROOT_INO, b"f")), "EINVAL")
    query_fails(meta, ReadLink(999), "ENOENT")


# --- links and removal ------------------------------------------------------------------------


def test_link(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    f = mkfile(meta, ROOT_INO, b"f")
    linked: Attr = ok(meta, Link(f, d, b"g", T0 + 7))
    assert (linked.ino, linked.nlink, linked.ctime_ns, linked.mtime_ns) == (f, 2, T0 + 7, T0)
    assert lookup_ino(meta, d, b"g") == f
    assert (attr(meta, d).mtime_ns, attr(meta, d).nlink) == (T0 + 7, 2)
    fails(meta, Link(d, ROOT_INO, b"d2", T0), "EPERM")
    fails(meta, Link(f, d, b"g", T0), "EEXIST")
    fails(meta, Link(999, d, b"x", T0), "ENOENT")
    fails(meta, Link(f, 999, b"x", T0), "ENOENT")
    fails(meta, Link(f, f, b"x", T0), "ENOTDIR")


def test_link_count_is_bounded(meta: MetaState, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(meta_module, "LINK_MAX", 3)
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, Link(f, ROOT_INO, b"g", T0))
    ok(meta, Link(f, ROOT_INO, b"h", T0))
    fails(meta, Link(f, ROOT_INO, b"i", T0), "EMLINK")


def test_orphan_cannot_be_linked_again(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, Unlink(ROOT_INO, b"f", T0))
    fails(meta, Link(f, ROOT_INO, b"g", T0), "ENOENT")


def test_unlink_keeps_orphan_until_purge(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, Link(f, ROOT_INO, b"g", T0))
    ok(meta, blind(meta, f, (chunk(0, 1, 10),), 10, T0))
    ok(meta, SetXattr(f, b"user.a", b"1", 0, T0))
    before = meta.dump()
    ok(meta, Purge((f,)))  # nlink 2: nothing to do
    assert meta.dump() == before
    assert ok(meta, Unlink(ROOT_INO, b"f", T0 + 3)).nlink == 1
    gone: Attr = ok(meta, Unlink(ROOT_INO, b"g", T0 + 4))
    assert (gone.ino, gone.nlink, gone.ctime_ns) == (f, 0, T0 + 4)
    assert names(meta, ROOT_INO) == []
    assert attr(meta, ROOT_INO).mtime_ns == T0 + 4
    # The orphan stays readable for clients that still have it open.
    assert attr(meta, f).size == 10
    assert meta.query(ReadChunks(f, 0, 100))[1] == [chunk(0, 1, 10)]
    assert meta.query(Garbage(10)) == []
    ok(meta, Purge((f,)))
    query_fails(meta, GetAttr(f), "ENOENT")
    query_fails(meta, ListXattr(f), "ENOENT")
    assert meta.query(Garbage(10)) == [block(1)]
    assert meta.query(FsInfo()) == FsStats(CS, 1, 0, 1, 10)
    before = meta.dump()
    ok(meta, Purge((f,)))  # already gone
    ok(meta, Purge((ROOT_INO,)))  # has links
    assert meta.dump() == before


def test_one_purge_deletes_every_orphan_it_names_and_nothing_else(meta: MetaState) -> None:
    a, b, kept = (mkfile(meta, ROOT_INO, name) for name in (b"a", b"b", b"kept"))
    for name in (b"a", b"b"):
        ok(meta, Unlink(ROOT_INO, name, T0))
    ok(meta, Purge((a, kept, b, 999)))
    query_fails(meta, GetAttr(a), "ENOENT")
    query_fails(meta, GetAttr(b), "ENOENT")
    assert attr(meta, kept).nlink == 1
    assert names(meta, ROOT_INO) == [b"kept"]


def test_an_orphan_is_noted_for_the_client_that_unlinked_it(meta: MetaState) -> None:
    a, b, c = (mkfile(meta, ROOT_INO, name) for name in (b"a", b"b", b"c"))
    ok(meta, Link(b, ROOT_INO, b"b2", T0))
    open_sessions(meta, b"mount-1", b"mount-2")
    meta.apply_batch([Entry(Unlink(ROOT_INO, b"a", T0), b"mount-1", 1)])
    meta.apply_batch([Entry(Unlink(ROOT_INO, b"b", T0), b"mount-1", 2)])  # b2 still names b
    meta.apply_batch([Entry(Rename(ROOT_INO, b"b2", ROOT_INO, b"c", 0, T0), b"mount-2", 1)])
    ok(meta, Unlink(ROOT_INO, b"c", T0))  # no client: nobody to wait for
    assert table(meta, "orphans") == [(a, b"mount-1"), (c, b"mount-2")]
    ok(meta, Purge((a, b, c)))
    assert table(meta, "orphans") == []


def test_unlink_errors(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    fails(meta, Unlink(ROOT_INO, b"d", T0), "EISDIR")
    fails(meta, Unlink(ROOT_INO, b"nothing", T0), "ENOENT")
    fails(meta, Unlink(999, b"x", T0), "ENOENT")
    fails(meta, Unlink(mkfile(meta, d, b"f"), b"x", T0), "ENOTDIR")


def test_rmdir(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    sub = mkdir(meta, d, b"sub")
    f = mkfile(meta, d, b"f")
    fails(meta, Rmdir(ROOT_INO, b"d", T0), "ENOTEMPTY")
    fails(meta, Rmdir(d, b"f", T0), "ENOTDIR")
    fails(meta, Rmdir(d, b"nothing", T0), "ENOENT")
    fails(meta, Rmdir(f, b"x", T0), "ENOTDIR")
    ok(meta, SetXattr(sub, b"user.a", b"1", 0, T0))
    ok(meta, Rmdir(d, b"sub", T0 + 9))
    query_fails(meta, GetAttr(sub), "ENOENT")
    assert (attr(meta, d).nlink, attr(meta, d).mtime_ns, attr(meta, d).ctime_ns) == (
        2,
        T0 + 9,
        T0 + 9,
    )
    ok(meta, Unlink(d, b"f", T0))
    ok(meta, Rmdir(ROOT_INO, b"d", T0))
    assert attr(meta, ROOT_INO).nlink == 2
    assert meta.query(FsInfo()).inode_count == 2  # root and the orphan f
    assert [t for t in meta.dump() if t[0] == "xattrs"] == [["xattrs", []]]


# --- rename -----------------------------------------------------------------------------------


def test_rename_file_within_directory(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"a")
    mkfile(meta, ROOT_INO, b"b")
    [old] = [e for e in listing(meta, ROOT_INO) if e.name == b"a"]
    assert ok(meta, Rename(ROOT_INO, b"a", ROOT_INO, b"c", 0, T0 + 2)) is None
    assert names(meta, ROOT_INO) == [b"b", b"c"]
    [new] = [e for e in listing(meta, ROOT_INO) if e.name == b"c"]
    assert new.offset > old.offset
    assert (new.attr.ino, new.attr.ctime_ns, new.attr.mtime_ns) == (f, T0 + 2, T0)
    root = attr(meta, ROOT_INO)
    assert (root.nlink, root.mtime_ns, root.ctime_ns) == (2, T0 + 2, T0 + 2)


def test_rename_directory_across_directories(meta: MetaState) -> None:
    a = mkdir(meta, ROOT_INO, b"a")
    b = mkdir(meta, ROOT_INO, b"b")
    d = mkdir(meta, a, b"d")
    ok(meta, Rename(a, b"d", b, b"e", 0, T0 + 3))
    assert (attr(meta, a).nlink, attr(meta, b).nlink, attr(meta, ROOT_INO).nlink) == (2, 3, 4)
    assert lookup_ino(meta, b, b"e") == d
    assert attr(meta, d).ctime_ns == T0 + 3
    assert attr(meta, a).mtime_ns == attr(meta, b).mtime_ns == T0 + 3


def test_rename_replaces_a_file(meta: MetaState) -> None:
    src = mkfile(meta, ROOT_INO, b"src")
    dst = mkfile(meta, ROOT_INO, b"dst")
    ok(meta, Link(dst, ROOT_INO, b"dst2", T0))
    replaced: Attr = ok(meta, Rename(ROOT_INO, b"src", ROOT_INO, b"dst", 0, T0 + 4))
    assert (replaced.ino, replaced.nlink, replaced.ctime_ns) == (dst, 1, T0 + 4)
    assert lookup_ino(meta, ROOT_INO, b"dst") == src
    replaced = ok(meta, Rename(ROOT_INO, b"dst", ROOT_INO, b"dst2", 0, T0 + 5))
    assert (replaced.ino, replaced.nlink) == (dst, 0)
    assert attr(meta, dst).nlink == 0  # an orphan until purged
    assert names(meta, ROOT_INO) == [b"dst2"]


def test_rename_replaces_an_empty_directory(meta: MetaState) -> None:
    a = mkdir(meta, ROOT_INO, b"a")
    b = mkdir(meta, ROOT_INO, b"b")
    src = mkdir(meta, a, b"src")
    dst = mkdir(meta, b, b"dst")
    replaced: Attr = ok(meta, Rename(a, b"src", b, b"dst", 0, T0 + 6))
    assert (replaced.ino, replaced.nlink) == (dst, 0)
    query_fails(meta, GetAttr(dst), "ENOENT")
    assert lookup_ino(meta, b, b"dst") == src
    assert (attr(meta, a).nlink, attr(meta, b).nlink) == (2, 3)


def test_rename_errors(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    full = mkdir(meta, ROOT_INO, b"full")
    mkfile(meta, full, b"x")
    f = mkfile(meta, ROOT_INO, b"f")
    fails(meta, Rename(ROOT_INO, b"nothing", ROOT_INO, b"y", 0, T0), "ENOENT")
    fails(meta, Rename(ROOT_INO, b"f", ROOT_INO, b"d", RENAME_NOREPLACE, T0), "EEXIST")
    fails(meta, Rename(ROOT_INO, b"f", ROOT_INO, b"new", RENAME_EXCHANGE, T0), "ENOENT")
    fails(meta, Rename(ROOT_INO, b"d", ROOT_INO, b"f", 0, T0), "ENOTDIR")
    fails(meta, Rename(ROOT_INO, b"f", ROOT_INO, b"d", 0, T0), "EISDIR")
    fails(meta, Rename(ROOT_INO, b"d", ROOT_INO, b"full", 0, T0), "ENOTEMPTY")
    fails(meta, Rename(ROOT_INO, b"f", 999, b"y", 0, T0), "ENOENT")
    fails(meta, Rename(ROOT_INO, b"f", f, b"y", 0, T0), "ENOTDIR")
    fails(meta, Rename(f, b"x", ROOT_INO, b"y", 0, T0), "ENOTDIR")
    for flags in (3, 4, -1):
        fails(meta, Rename(ROOT_INO, b"f", ROOT_INO, b"g", flags, T0), "EINVAL")
    ok(meta, Rename(ROOT_INO, b"f", d, b"f", RENAME_NOREPLACE, T0))
    assert names(meta, d) == [b"f"]


def test_rename_into_own_subtree(meta: MetaState) -> None:
    a = mkdir(meta, ROOT_INO, b"a")
    b = mkdir(meta, a, b"b")
    c = mkdir(meta, b, b"c")
    fails(meta, Rename(ROOT_INO, b"a", a, b"x", 0, T0), "EINVAL")
    fails(meta, Rename(ROOT_INO, b"a", c, b"x", 0, T0), "EINVAL")
    fails(meta, Rename(ROOT_INO, b"a", c, b"x", RENAME_EXCHANGE, T0), "ENOENT")
    mkfile(meta, c, b"x")
    fails(meta, Rename(ROOT_INO, b"a", c, b"x", RENAME_EXCHANGE, T0), "EINVAL")
    # The target is an ancestor of the source: not empty, or EINVAL when exchanging.
    fails(meta, Rename(b, b"c", ROOT_INO, b"a", 0, T0), "ENOTEMPTY")
    fails(meta, Rename(c, b"x", ROOT_INO, b"a", 0, T0), "ENOTEMPTY")
    fails(meta, Rename(b, b"c", ROOT_INO, b"a", RENAME_EXCHANGE, T0), "EINVAL")
    ok(meta, Rename(b, b"c", ROOT_INO, b"c", 0, T0))  # moving up is fine
    assert names(meta, ROOT_INO) == [b"a", b"c"]


def test_rename_onto_same_inode_does_nothing(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, Link(f, ROOT_INO, b"g", T0))
    mkdir(meta, ROOT_INO, b"d")
    before = meta.dump()
    assert ok(meta, Rename(ROOT_INO, b"f", ROOT_INO, b"g", 0, T0 + 9)) is None
    assert ok(meta, Rename(ROOT_INO, b"f", ROOT_INO, b"f", 0, T0 + 9)) is None
    assert ok(meta, Rename(ROOT_INO, b"d", ROOT_INO, b"d", 0, T0 + 9)) is None
    assert ok(meta, Rename(ROOT_INO, b"f", ROOT_INO, b"g", RENAME_EXCHANGE, T0 + 9)) is None
    assert meta.dump() == before
    fails(meta, Rename(ROOT_INO, b"f", ROOT_INO, b"g", RENAME_NOREPLACE, T0), "EEXIST")


def test_exchange_file_and_directory_across_directories(meta: MetaState) -> None:
    a = mkdir(meta, ROOT_INO, b"a")
    b = mkdir(meta, ROOT_INO, b"b")
    f = mkfile(meta, a, b"f")
    d = mkdir(meta, b, b"d")
    mkfile(meta, d, b"inside")  # exchange does not care whether a directory is empty
    assert (attr(meta, a).nlink, attr(meta, b).nlink) == (2, 3)
    other: Attr = ok(meta, Rename(a, b"f", b, b"d", RENAME_EXCHANGE, T0 + 8))
    assert (other.ino, other.nlink, other.ctime_ns) == (d, 2, T0 + 8)
    assert lookup_ino(meta, a, b"f") == d
    assert lookup_ino(meta, b, b"d") == f
    assert (attr(meta, a).nlink, attr(meta, b).nlink) == (3, 2)
    assert attr(meta, f).ctime_ns == T0 + 8
    assert attr(meta, a).mtime_ns == attr(meta, b).mtime_ns == T0 + 8
    ok(meta, Rename(a, b"f", b, b"d", RENAME_EXCHANGE, T0))  # and back
    assert (attr(meta, a).nlink, attr(meta, b).nlink) == (2, 3)
    assert (lookup_ino(meta, a, b"f"), lookup_ino(meta, b, b"d")) == (f, d)


def test_exchange_two_directories(meta: MetaState) -> None:
    a = mkdir(meta, ROOT_INO, b"a")
    b = mkdir(meta, ROOT_INO, b"b")
    x = mkdir(meta, a, b"x")
    y = mkdir(meta, b, b"y")
    ok(meta, Rename(a, b"x", b, b"y", RENAME_EXCHANGE, T0))
    assert (lookup_ino(meta, a, b"x"), lookup_ino(meta, b, b"y")) == (y, x)
    assert (attr(meta, a).nlink, attr(meta, b).nlink) == (3, 3)
    # Same directory: both names stay, swapped, with new cookies.
    offsets = [e.offset for e in listing(meta, ROOT_INO)]
    ok(meta, Rename(ROOT_INO, b"a", ROOT_INO, b"b", RENAME_EXCHANGE, T0))
    entries = listing(meta, ROOT_INO)
    assert [(e.name, e.attr.ino) for e in entries] == [(b"a", b), (b"b", a)]
    assert min(e.offset for e in entries) > max(offsets)
    assert attr(meta, ROOT_INO).nlink == 4


# --- attributes, truncation and chunk commits -------------------------------------------------


def test_setattr_fields(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    changed: Attr = ok(meta, Setattr(d, stat.S_IFREG | 0o4700, 7, 8, None, 11, 12, T0 + 13))
    assert changed.mode == stat.S_IFDIR | 0o4700  # the type never changes
    assert (changed.uid, changed.gid, changed.atime_ns, changed.mtime_ns) == (7, 8, 11, 12)
    assert changed.ctime_ns == T0 + 13
    same: Attr = ok(meta, Setattr(d, None, None, None, None, None, None, T0 + 14))
    assert same == dataclasses.replace(changed, ctime_ns=T0 + 14)
    fails(meta, Setattr(999, 0o644, None, None, None, None, None, T0), "ENOENT")
    fails(meta, Setattr(d, None, -1, None, None, None, None, T0), "EINVAL")


def test_setattr_size_errors(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    link: Attr = ok(meta, Symlink(ROOT_INO, b"l", b"t", UID, GID, T0))
    f = mkfile(meta, ROOT_INO, b"f")
    fails(meta, Setattr(d, None, None, None, 0, None, None, T0), "EISDIR")
    fails(meta, Setattr(link.ino, None, None, None, 0, None, None, T0), "EINVAL")
    fails(meta, Setattr(f, 0o600, None, None, -1, None, None, T0), "EINVAL")


def _file_with_three_chunks(meta: MetaState) -> int:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, blind(meta, f, (chunk(0, 1), chunk(1, 2), chunk(2, 3, 100)), 2 * CS + 100, T0))
    return f


def test_truncate_down_drops_and_shortens_chunks(meta: MetaState) -> None:
    f = _file_with_three_chunks(meta)
    before = attr(meta, f)
    assert (before.size, before.blocks) == (2 * CS + 100, (2 * CS + 100 + 511) // 512)
    cut: Attr = ok(meta, Setattr(f, None, None, None, CS + 904, None, None, T0 + 20))
    assert (cut.size, cut.mtime_ns, cut.ctime_ns) == (CS + 904, T0 + 20, T0 + 20)
    assert cut.version == before.version + 1
    assert cut.blocks == (CS + 904 + 511) // 512
    assert meta.query(ReadChunks(f, 0, 100)) == (cut, [chunk(0, 1), chunk(1, 2, 904)])
    assert meta.query(Garbage(10)) == [block(3)]
    cut = ok(meta, Setattr(f, None, None, None, CS, None, None, T0 + 21))
    assert meta.query(ReadChunks(f, 0, 100)) == (cut, [chunk(0, 1)])
    assert meta.query(Garbage(10)) == [block(3), block(2)]
    assert meta.query(FsInfo()) == FsStats(CS, 2, CS, 2, 100 + 904)  # as the chunks held them


def test_a_map_read_unless_at_a_version_the_caller_holds(meta: MetaState) -> None:
    f = _file_with_three_chunks(meta)
    now = attr(meta, f)
    assert meta.query(ReadChunks(f, 0, 100, now.version)) == (now, [])
    assert meta.query(ReadChunks(f, 0, 100, now.version - 1)) == meta.query(ReadChunks(f, 0, 100))
    ok(meta, Setattr(f, None, None, None, CS, None, None, T0 + 20))  # a new version
    changed = attr(meta, f)
    assert meta.query(ReadChunks(f, 0, 100, now.version)) == (changed, [chunk(0, 1)])


def test_truncate_up_only_sets_size(meta: MetaState) -> None:
    f = _file_with_three_chunks(meta)
    ok(meta, Setattr(f, None, None, None, 10, None, None, T0))
    grown: Attr = ok(meta, Setattr(f, None, None, None, 10 * CS, None, 77, T0 + 30))
    assert (grown.size, grown.mtime_ns, grown.ctime_ns) == (10 * CS, 77, T0 + 30)
    # The shortened chunk stays short: the bytes past 10 read as zeros again.
    assert meta.query(ReadChunks(f, 0, 100))[1] == [chunk(0, 1, 10)]


def test_same_size_keeps_version_but_moves_mtime(meta: MetaState) -> None:
    f = _file_with_three_chunks(meta)
    before = attr(meta, f)
    after: Attr = ok(meta, Setattr(f, None, None, None, before.size, None, None, T0 + 40))
    assert (after.version, after.mtime_ns) == (before.version, T0 + 40)
    assert meta.query(ReadChunks(f, 0, 100))[1] == [chunk(0, 1), chunk(1, 2), chunk(2, 3, 100)]


def test_commit_chunks(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    first: Attr = ok(meta, blind(meta, f, (chunk(1, 2, 10), chunk(0, 1)), CS + 10, T0 + 50))
    assert (first.size, first.version, first.mtime_ns, first.ctime_ns) == (
        CS + 10,
        1,
        *[T0 + 50] * 2,
    )
    assert first.blocks == (CS + 10 + 511) // 512
    assert meta.query(ReadChunks(f, 0, 100)) == (first, [chunk(0, 1), chunk(1, 2, 10)])
    # Rewriting chunk 0 frees its old block; a smaller size never shrinks the file.
    second: Attr = ok(meta, blind(meta, f, (chunk(0, 5),), 100, T0 + 51))
    assert (second.size, second.version) == (CS + 10, 2)
    assert meta.query(Garbage(10)) == [block(1)]
    # Committing the same block again is no change of block.
    ok(meta, blind(meta, f, (chunk(0, 5),), CS, T0 + 52))
    assert meta.query(Garbage(10)) == [block(1)]
    assert meta.query(FsInfo()) == FsStats(CS, 2, CS + 10, 1, CS)


def test_commit_cuts_chunks_past_the_end(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, blind(meta, f, (chunk(0, 1, 100), chunk(1, 2, 50)), 60, T0))
    assert meta.query(ReadChunks(f, 0, 100))[1] == [chunk(0, 1, 60)]
    assert meta.query(Garbage(10)) == [block(2)]


def test_commit_errors(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    d = mkdir(meta, ROOT_INO, b"d")
    link: Attr = ok(meta, Symlink(ROOT_INO, b"l", b"t", UID, GID, T0))
    fails(meta, blind(meta, d, (chunk(0, 1),), CS, T0), "EISDIR")
    fails(meta, blind(meta, link.ino, (chunk(0, 1),), CS, T0), "EINVAL")
    fails(meta, blind(meta, 999, (chunk(0, 1),), CS, T0), "ENOENT")
    fails(meta, blind(meta, f, (chunk(0, 1, CS + 1),), CS + 1, T0), "EINVAL")
    fails(meta, blind(meta, f, (chunk(0, 1), chunk(0, 2)), CS, T0), "EINVAL")
    fails(meta, blind(meta, f, (), -1, T0), "EINVAL")


def tailed(n: int, stored: int, tail: bytes, idx: int = 0) -> Chunk:
    """Chunk `idx` keeping the first `stored` bytes of block `n` and `tail` after them."""
    return Chunk(idx, block(n), stored + len(tail), SUM, tail=tail)


def test_a_tail_extends_the_stored_block(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, blind(meta, f, (chunk(0, 1, 100),), 100, T0))
    grown: Attr = ok(meta, blind(meta, f, (tailed(1, 100, b"a" * 50),), 150, T0 + 1))
    assert (grown.size, grown.blocks) == (150, 1)
    assert meta.query(ReadChunks(f, 0, 100)) == (grown, [tailed(1, 100, b"a" * 50)])
    # The next append builds on the tailed chunk; the tail is all that travels.
    ok(meta, blind(meta, f, (tailed(1, 100, b"a" * 50 + b"b" * 20),), 170, T0 + 2))
    assert meta.query(ReadChunks(f, 0, 100))[1] == [tailed(1, 100, b"a" * 50 + b"b" * 20)]
    assert meta.query(Garbage(10)) == []  # block 1 is still the chunk's
    assert table(meta, "chunk_tails") == [(f, 0, b"a" * 50 + b"b" * 20)]
    # A writer that built on the earlier tail sees the change, though block and length match
    # what another chunk had: the identity covers the tail.
    earlier = tailed(1, 100, b"a" * 70)
    stale = ChunkUpdate(tailed(1, 100, b"c" * 70), earlier.identity, earlier.length)
    fails(meta, CommitChunks(f, (stale,), 170, None, None, None, None, T0 + 3), "ECHANGED")
    plain = ChunkUpdate(tailed(1, 100, b"c" * 70), block(1), 170)
    fails(meta, CommitChunks(f, (plain,), 170, None, None, None, None, T0 + 3), "ECHANGED")
    # A whole new block replaces block and tail: the old block becomes garbage.
    ok(meta, blind(meta, f, (chunk(0, 2, 170),), 170, T0 + 4))
    assert meta.query(Garbage(10)) == [block(1)]
    assert table(meta, "chunk_tails") == []


def test_a_tail_must_follow_the_stored_bytes_of_its_base(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    fails(meta, blind(meta, f, (tailed(1, 100, b"t"),), 101, T0), "EINVAL")  # no base
    ok(meta, blind(meta, f, (chunk(0, 1, 100),), 100, T0))
    fails(meta, blind(meta, f, (tailed(2, 100, b"t"),), 101, T0), "EINVAL")  # another block
    fails(meta, blind(meta, f, (tailed(1, 90, b"t" * 11),), 101, T0), "EINVAL")  # over it
    other = Chunk(0, block(1), 101, bytes([1]) * 32, tail=b"t")
    fails(meta, blind(meta, f, (other,), 101, T0), "EINVAL")  # another checksum
    g = mkfile(meta, ROOT_INO, b"g")
    small = b"x" * 10
    ok(meta, blind(meta, g, (Chunk(0, block(3), 10, hashlib.sha256(small).digest(), small),), 10))
    inline_tail = Chunk(0, block(3), 11, hashlib.sha256(small).digest(), tail=b"y")
    fails(meta, blind(meta, g, (inline_tail,), 11, T0), "EINVAL")  # the metadata keeps it all
    for length, tail in ((10, b"t" * 10), (TAIL_MAX + 10, b"t" * (TAIL_MAX + 1))):
        with pytest.raises(NodeError, match="a tail is at most"):
            Chunk(0, block(1), length, SUM, tail=tail)


def test_a_truncation_cuts_a_tail_and_an_unlink_drops_it(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, blind(meta, f, (chunk(0, 1, 100),), 100, T0))
    ok(meta, blind(meta, f, (tailed(1, 100, b"abcdef"),), 106, T0))
    cut: Attr = ok(meta, Setattr(f, None, None, None, 103, None, None, T0 + 1))
    assert meta.query(ReadChunks(f, 0, 100)) == (cut, [tailed(1, 100, b"abc")])
    ok(meta, Setattr(f, None, None, None, 5000, None, None, T0 + 2))  # zeros after it again
    assert meta.query(ReadChunks(f, 0, 100))[1] == [tailed(1, 100, b"abc")]
    ok(meta, Setattr(f, None, None, None, 60, None, None, T0 + 3))  # into the stored bytes
    assert meta.query(ReadChunks(f, 0, 100))[1] == [chunk(0, 1, 60)]
    assert table(meta, "chunk_tails") == []
    ok(meta, blind(meta, f, (tailed(1, 60, b"again"),), 65, T0 + 4))
    ok(meta, Unlink(ROOT_INO, b"f", T0 + 5))
    ok(meta, Purge((f,)))
    assert (table(meta, "chunk_tails"), table(meta, "chunks")) == ([], [])
    assert garbage_backlog(meta) == (1, 60)  # the block's bytes: the tail went with the map


def test_a_chunk_map_with_many_tails_comes_in_pages(
    meta: MetaState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commands, "TAIL_PAGE_BYTES", 25)
    f = mkfile(meta, ROOT_INO, b"f")
    chunks = tuple(chunk(i, 10 + i, 100) for i in range(4))
    ok(meta, blind(meta, f, chunks, 3 * CS + 100, T0))
    ok(meta, blind(meta, f, tuple(tailed(10 + i, 100, b"t" * 10, idx=i) for i in range(4)), 0))
    pages = [meta.query(ReadChunks(f, first, 100))[1] for first in (0, 3)]
    assert [[c.idx for c in page] for page in pages] == [[0, 1, 2], [3]]


def test_garbage_tracks_block_references(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    g = mkfile(meta, ROOT_INO, b"g")
    ok(meta, blind(meta, f, (chunk(0, 1),), CS, T0))
    ok(meta, blind(meta, g, (chunk(0, 1),), CS, T0))  # one block in two files
    ok(meta, blind(meta, f, (chunk(0, 2),), CS, T0))
    assert meta.query(Garbage(10)) == []  # g still uses block 1
    ok(meta, blind(meta, g, (chunk(0, 3),), CS, T0))
    ok(meta, blind(meta, f, (chunk(0, 4),), CS, T0))
    assert meta.query(Garbage(10)) == [block(1), block(2)]
    assert meta.query(Garbage(1)) == [block(1)]
    # A block on the garbage list may be deleted at any moment: it is never referenced again.
    fails(meta, blind(meta, g, (chunk(1, 1),), 2 * CS, T0), "ESTALE")
    assert meta.query(FsInfo()).garbage_blocks == 2
    ok(meta, ForgetGarbage((block(2), block(99))))
    assert meta.query(Garbage(10)) == [block(1)]
    assert garbage_backlog(meta) == (1, CS)
    query_fails(meta, Garbage(0), "EINVAL")


def test_an_abandoned_upload_is_collected_and_never_committed(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, blind(meta, f, (chunk(0, 1),), CS, T0))
    # Block 1 is referenced: left alone. Blocks 2 and 3 were uploaded and never committed.
    three = (block(1), block(2), block(3))
    assert ok(meta, Abandon(three, (CS, 7, 9))) == [block(1)]
    assert meta.query(Garbage(10)) == [block(2), block(3)]
    assert garbage_backlog(meta) == (2, 16)  # the lengths the nodes gave
    fails(meta, Abandon(three, (1, 2)), "EINVAL")
    fails(meta, Abandon((block(4),), (-1,)), "EINVAL")
    # No block is longer than 16 MiB. Found by the live fuzzer: lengths summing past 2**63
    # overflowed the garbage counter, and every replica failed the command (EIO).
    fails(meta, Abandon((block(4),), (2**24 + 1,)), "EINVAL")
    fails(meta, Abandon((block(4), block(5)), (2**62, 2**62)), "EINVAL")
    fails(meta, blind(meta, f, (chunk(1, 2),), 2 * CS, T0), "ESTALE")
    # Deleted from every node and forgotten by the collector: still never committed.
    ok(meta, ForgetGarbage((block(2), block(3))))
    assert meta.query(Garbage(10)) == []
    assert garbage_backlog(meta) == (0, 0)
    fails(meta, blind(meta, f, (chunk(1, 3),), 2 * CS, T0), "ESTALE")
    assert ok(meta, Abandon((block(2),), (7,))) == []  # again: nothing changes
    assert meta.query(Garbage(10)) == [block(2)]


def test_commit_applies_only_on_the_bases_it_was_built_on(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, blind(meta, f, (chunk(0, 1, 100),), 100))
    # Another writer's commit, built on the same view, came first: this one changes nothing.
    stale = CommitChunks(
        f, (ChunkUpdate(chunk(0, 3, 200), b"", 0),), 200, None, None, None, None, T0
    )
    fails(meta, stale, "ECHANGED")
    fails(
        meta,
        CommitChunks(f, (ChunkUpdate(chunk(0, 3), block(9), 100),), CS, None, None, None, None, T0),
        "ECHANGED",
    )
    # The right block at another length (a truncation since) is a change too.
    ok(meta, Setattr(f, None, None, None, 50, None, None, T0))
    fails(
        meta,
        CommitChunks(f, (ChunkUpdate(chunk(0, 3), block(1), 100),), CS, None, None, None, None, T0),
        "ECHANGED",
    )
    ok(
        meta,
        CommitChunks(
            f, (ChunkUpdate(chunk(0, 3, 60), block(1), 50),), 60, None, None, None, None, T0
        ),
    )
    assert meta.query(ReadChunks(f, 0, 100))[1] == [chunk(0, 3, 60)]
    assert meta.query(Garbage(10)) == [block(1)]
    # A chunk that did not exist must still not exist.
    fails(
        meta,
        CommitChunks(f, (ChunkUpdate(chunk(0, 4), b"", 0),), CS, None, None, None, None, T0),
        "ECHANGED",
    )


def test_an_append_commits_only_at_the_size_it_expects(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, blind(meta, f, (chunk(0, 1, 100),), 100))
    append = ChunkUpdate(chunk(0, 2, 150), block(1), 100)
    fails(meta, CommitChunks(f, (append,), 150, 90, None, None, None, T0), "ECHANGED")
    done: Attr = ok(meta, CommitChunks(f, (append,), 150, 100, None, None, None, T0))
    assert done.size == 150


def test_read_chunks_in_pages(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, blind(meta, f, tuple(chunk(i, i + 1) for i in range(0, 10, 2)), 9 * CS))
    attr_, first = meta.query(ReadChunks(f, 0, 2))
    assert [c.idx for c in first] == [0, 2]
    assert [c.idx for c in meta.query(ReadChunks(f, 3, 2))[1]] == [4, 6]
    assert [c.idx for c in meta.query(ReadChunks(f, 7, 100))[1]] == [8]
    assert meta.query(ReadChunks(f, 9, 100)) == (attr_, [])
    query_fails(meta, ReadChunks(f, 0, 0), "EINVAL")


def test_read_chunks_errors(meta: MetaState) -> None:
    query_fails(meta, ReadChunks(ROOT_INO, 0, 100), "EISDIR")
    query_fails(meta, ReadChunks(999, 0, 100), "ENOENT")


# --- xattrs -----------------------------------------------------------------------------------


def test_xattrs(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, SetXattr(f, b"user.b", b"2", 0, T0 + 1))
    ok(meta, SetXattr(f, b"user.a", b"\x001", XATTR_CREATE, T0 + 2))
    assert attr(meta, f).ctime_ns == T0 + 2
    assert meta.query(ListXattr(f)) == [b"user.a", b"user.b"]
    assert meta.query(GetXattr(f, b"user.a")) == b"\x001"
    fails(meta, SetXattr(f, b"user.a", b"x", XATTR_CREATE, T0), "EEXIST")
    fails(meta, SetXattr(f, b"user.c", b"x", XATTR_REPLACE, T0), "ENODATA")
    fails(meta, SetXattr(f, b"user.a", b"x", XATTR_CREATE | XATTR_REPLACE, T0), "EEXIST")
    fails(meta, SetXattr(f, b"user.a", b"x", 4, T0), "EINVAL")
    ok(meta, SetXattr(f, b"user.a", b"new", XATTR_REPLACE, T0))
    assert meta.query(GetXattr(f, b"user.a")) == b"new"
    ok(meta, RemoveXattr(f, b"user.a", T0 + 3))
    assert attr(meta, f).ctime_ns == T0 + 3
    assert meta.query(ListXattr(f)) == [b"user.b"]
    fails(meta, RemoveXattr(f, b"user.a", T0), "ENODATA")
    query_fails(meta, GetXattr(f, b"user.a"), "ENODATA")
    fails(meta, SetXattr(999, b"user.a", b"x", 0, T0), "ENOENT")
    fails(meta, RemoveXattr(999, b"user.a", T0), "ENOENT")
    query_fails(meta, GetXattr(999, b"user.a"), "ENOENT")
    query_fails(meta, ListXattr(999), "ENOENT")


def test_xattr_limits(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    ok(meta, SetXattr(f, b"n" * 255, b"v" * 65536, 0, T0))
    assert meta.query(GetXattr(f, b"n" * 255)) == b"v" * 65536
    fails(meta, SetXattr(f, b"n" * 256, b"v", 0, T0), "ERANGE")
    fails(meta, SetXattr(f, b"n", b"v" * 65537, 0, T0), "E2BIG")
    fails(meta, SetXattr(f, b"", b"v", 0, T0), "EINVAL")
    fails(meta, RemoveXattr(f, b"n" * 256, T0), "ERANGE")
    query_fails(meta, GetXattr(f, b"n" * 256), "ERANGE")
    query_fails(meta, GetXattr(f, b""), "EINVAL")


# --- readdir ----------------------------------------------------------------------------------


def test_readdir_offsets_are_stable(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    for name in (b"z", b"a", b"m"):
        mkfile(meta, d, name)
    first = listing(meta, d)
    assert [e.name for e in first] == [b"z", b"a", b"m"]  # creation order, not name order
    assert all(e.offset > DOT_ENTRIES for e in first)
    ok(meta, Unlink(d, b"a", T0))
    mkdir(meta, d, b"b")
    mkfile(meta, ROOT_INO, b"elsewhere")
    mkfile(meta, d, b"c")
    second = listing(meta, d)
    assert [(e.name, e.offset) for e in second[:2]] == [
        (b"z", first[0].offset),
        (b"m", first[2].offset),
    ]
    assert [e.name for e in second] == [b"z", b"m", b"b", b"c"]
    assert second[2].attr.mode & stat.S_IFDIR
    offsets = [e.offset for e in second]
    assert offsets == sorted(offsets)
    # Paging goes on from an offset whose entry has been removed since.
    page = listing(meta, d, limit=1)
    ok(meta, Unlink(d, b"z", T0))
    assert [e.name for e in listing(meta, d, page[-1].offset)] == [b"m", b"b", b"c"]
    assert listing(meta, d, offsets[-1]) == []


def test_readdir_starts_with_dot_and_dotdot(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    sub = mkdir(meta, d, b"sub")
    mkfile(meta, sub, b"f")
    whole = meta.query(ReadDir(sub, 0, 100))
    assert [(e.offset, e.name) for e in whole[:2]] == [(1, b"."), (2, b"..")]
    assert (whole[0].attr, whole[1].attr) == (attr(meta, sub), attr(meta, d))
    assert [e.name for e in whole[2:]] == [b"f"]
    # The root is its own parent, as on ext4.
    root = meta.query(ReadDir(ROOT_INO, 0, 2))
    assert [(e.name, e.attr.ino) for e in root] == [(b".", ROOT_INO), (b"..", ROOT_INO)]
    # Paged one at a time from any offset, every entry comes exactly once.
    seen, after = [], 0
    while page := meta.query(ReadDir(sub, after, 1)):
        seen += [e.name for e in page]
        after = page[-1].offset
    assert seen == [b".", b"..", b"f"]
    assert [e.name for e in meta.query(ReadDir(sub, 1, 100))] == [b"..", b"f"]


def test_readdir_paging(meta: MetaState) -> None:
    d = mkdir(meta, ROOT_INO, b"d")
    meta.apply_batch(
        [Entry(Mknod(d, b"f%04d" % i, REG, 0, UID, GID, T0)) for i in range(READDIR_MAX + 30)]
    )
    seen: list[bytes] = []
    after = 0
    while page := meta.query(ReadDir(d, after, 7)):
        assert len(page) <= 7
        seen += [e.name for e in page]
        after = page[-1].offset
    assert seen == [b".", b"..", *(b"f%04d" % i for i in range(READDIR_MAX + 30))]
    assert len(meta.query(ReadDir(d, 0, 10**6))) == READDIR_MAX
    query_fails(meta, ReadDir(d, 0, 0), "EINVAL")
    query_fails(meta, ReadDir(lookup_ino(meta, d, b"f0000"), 0, 5), "ENOTDIR")
    query_fails(meta, ReadDir(10**6, 0, 5), "ENOENT")


def test_readdir_attrs_match_getattr(meta: MetaState) -> None:
    f = _file_with_three_chunks(meta)
    ok(meta, Symlink(ROOT_INO, b"l", b"target", UID, GID, T0))
    mkdir(meta, ROOT_INO, b"d")
    for entry in listing(meta, ROOT_INO):
        assert entry.attr == attr(meta, entry.attr.ino)
    assert attr(meta, f).blocks > 0


# --- batches, sessions and persistence --------------------------------------------------------


def test_failing_command_leaves_its_neighbours(meta: MetaState) -> None:
    outcomes = meta.apply_batch(
        [
            Entry(Mknod(ROOT_INO, b"a", REG, 0, UID, GID, T0)),
            Entry(Mknod(ROOT_INO, b"a", REG, 0, UID, GID, T0)),
            Entry(Rmdir(ROOT_INO, b"nothing", T0)),
            Entry(Mkdir(ROOT_INO, b"b", 0o755, UID, GID, T0)),
        ]
    )
    assert [o.error for o in outcomes] == [None, "EEXIST", "ENOENT", None]
    assert names(meta, ROOT_INO) == [b"a", b"b"]


def test_failure_after_a_write_rolls_back_only_that_command(
    meta: MetaState, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = MetaState._apply_purge

    def purge_then_fail(self: MetaState, command: Purge) -> None:
        original(self, command)
        raise NodeError("EIO", "injected")

    monkeypatch.setattr(MetaState, "_apply_purge", purge_then_fail)
    f = mkfile(meta, ROOT_INO, b"f")
    outcomes = meta.apply_batch(
        [
            Entry(Unlink(ROOT_INO, b"f", T0)),
            Entry(Purge((f,))),
            Entry(Mkdir(ROOT_INO, b"d", 0, 0, 0, T0)),
        ]
    )
    assert [o.error for o in outcomes] == [None, "EIO", None]
    assert attr(meta, f).nlink == 0  # the purge was undone
    assert names(meta, ROOT_INO) == [b"d"]


def test_a_bug_in_one_command_answers_eio_for_it_alone(
    meta: MetaState, monkeypatch: pytest.MonkeyPatch, expected_logs: list[str]
) -> None:
    expected_logs.append("metadata command purge failed")

    def broken(self: MetaState, command: Purge) -> None:
        self._rows.run("DELETE FROM inodes WHERE ino = ?", ROOT_INO)  # half done, then:
        raise RuntimeError("bug")

    monkeypatch.setattr(MetaState, "_apply_purge", broken)
    outcomes = meta.apply_batch(
        [
            Entry(Mkdir(ROOT_INO, b"d", 0, 0, 0, T0)),
            Entry(Purge((5,))),
            Entry(Mkdir(ROOT_INO, b"e", 0, 0, 0, T0)),
        ],
        9,
    )
    assert [o.error for o in outcomes] == [None, "EIO", None]
    assert names(meta, ROOT_INO) == [b"d", b"e"]  # the bug's half-done work was undone
    assert meta.applied_index == 9  # one transaction: no crash can split the batch


def test_a_bug_after_the_handler_fails_the_entry_alone_and_a_retry_runs_it_again(
    meta: MetaState, monkeypatch: pytest.MonkeyPatch, expected_logs: list[str]
) -> None:
    expected_logs.append("metadata command mkdir failed")
    open_sessions(meta, b"client-1")
    mkdir_d = Entry(Mkdir(ROOT_INO, b"d", 0o755, UID, GID, T0), b"client-1", 1)
    handler = MetaState._apply_mkdir
    monkeypatch.setattr(MetaState, "_apply_mkdir", lambda self, c: object())  # unencodable
    file_e = Entry(Mknod(ROOT_INO, b"e", stat.S_IFREG | 0o644, 0, 0, 0, T0))
    failed, _ = meta.apply_batch([mkdir_d, file_e])
    assert failed == Outcome(None, "EIO")
    assert names(meta, ROOT_INO) == [b"e"]
    monkeypatch.setattr(MetaState, "_apply_mkdir", handler)
    [retried] = meta.apply_batch([mkdir_d])  # the EIO was not kept for the session
    assert retried.error is None
    assert sorted(names(meta, ROOT_INO)) == [b"d", b"e"]


def test_storage_failures_are_told_from_bugs() -> None:
    full = sqlite3.OperationalError("database or disk is full")
    full.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
    logic = sqlite3.OperationalError("no such column: x")
    logic.sqlite_errorcode = sqlite3.SQLITE_ERROR  # type: ignore[attr-defined]
    try:
        try:
            raise full
        except sqlite3.Error:
            raise RuntimeError("raised while handling it")  # noqa: B904
    except RuntimeError as during:
        chained = during
    assert meta_module.is_storage_failure(full)
    assert meta_module.is_storage_failure(chained)
    assert meta_module.is_storage_failure(MemoryError())
    assert not meta_module.is_storage_failure(logic)
    assert not meta_module.is_storage_failure(RuntimeError("bug"))


def fill_the_disk(meta: MetaState) -> None:
    """SQLite answers SQLITE_FULL from now on for anything that needs a new page."""
    (pages,) = meta._db.execute("PRAGMA page_count").fetchone()
    meta._db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_full_disk_rolls_back_the_whole_batch_and_propagates(meta: MetaState) -> None:
    fill_the_disk(meta)
    before = meta.dump()
    batch = [Entry(Mkdir(ROOT_INO, b"d%04d" % i + b"x" * 200, 0, 0, 0, T0)) for i in range(200)]
    with pytest.raises(sqlite3.OperationalError) as full:
        meta.apply_batch(batch, 9)
    assert meta_module.is_storage_failure(full.value)
    assert meta.dump() == before
    assert meta.applied_index == 0


def test_same_request_applies_once(meta: MetaState) -> None:
    open_sessions(meta, b"client-1", b"client-2")
    mkdir_a = Entry(Mkdir(ROOT_INO, b"a", 0o755, UID, GID, T0), b"client-1", 1)
    [first] = meta.apply_batch([mkdir_a])
    assert first.error is None
    [again] = meta.apply_batch([mkdir_a])
    assert again == first  # not EEXIST: the stored outcome
    # A duplicate within one batch, and another client with the same seq.
    other = Entry(Mkdir(ROOT_INO, b"a", 0o755, UID, GID, T0), b"client-2", 1)
    outcomes = meta.apply_batch([mkdir_a, other, mkdir_a])
    assert outcomes == [first, Outcome(None, "EEXIST"), first]
    assert names(meta, ROOT_INO) == [b"a"]


def test_stored_errors_are_replayed(meta: MetaState) -> None:
    open_sessions(meta, b"c")
    rmdir = Entry(Rmdir(ROOT_INO, b"d", T0), b"c", 5)
    assert meta.apply_batch([rmdir]) == [Outcome(None, "ENOENT")]
    mkdir(meta, ROOT_INO, b"d")
    assert meta.apply_batch([rmdir]) == [Outcome(None, "ENOENT")]
    assert names(meta, ROOT_INO) == [b"d"]


def test_unsessioned_commands_apply_every_time(meta: MetaState) -> None:
    create = Entry(Mkdir(ROOT_INO, b"a", 0o755, UID, GID, T0))
    assert [o.error for o in meta.apply_batch([create, create])] == [None, "EEXIST"]


def test_acked_below_forgets_sessions(meta: MetaState) -> None:
    def sessions() -> list[tuple[Any, ...]]:
        return [row[:2] for row in table(meta, "sessions")]

    open_sessions(meta, b"c", b"other")
    creates = [Entry(Mkdir(ROOT_INO, b"d%d" % i, 0o755, UID, GID, T0), b"c", i) for i in range(3)]
    meta.apply_batch(creates)
    meta.apply_batch([Entry(Mkdir(ROOT_INO, b"x", 0, 0, 0, T0), b"other", 0)])
    assert sessions() == [(b"c", 0), (b"c", 1), (b"c", 2), (b"other", 0)]
    [outcome] = meta.apply_batch([Entry(Rmdir(ROOT_INO, b"d0", T0), b"c", 3, 2)])
    assert outcome.error is None
    assert sessions() == [(b"c", 2), (b"c", 3), (b"other", 0)]
    # A late duplicate of a forgotten request must not run again.
    [late] = meta.apply_batch([creates[0]])
    assert late.error == "ESTALE"
    assert b"d0" not in names(meta, ROOT_INO)
    [replay] = meta.apply_batch([creates[2]])
    assert replay.error is None


def test_applied_index_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.db"
    with MetaState(path) as meta:
        meta.apply_batch([Entry(Init(CS, 0, 0, T0))], last_index=5)
        meta.apply_batch([Entry(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, T0))])
        assert meta.applied_index == 5
        meta.apply_batch([], last_index=6)
        before = meta.dump()
    with MetaState(path) as meta:
        assert meta.applied_index == 6
        assert meta.dump() == before


def test_refuses_a_database_of_another_schema(tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "new.db") as db:
        db.execute("PRAGMA user_version = 99")
    db.close()
    with pytest.raises(NodeError) as info:
        MetaState(tmp_path / "new.db")
    assert info.value.name == "EINVAL"


def test_a_database_of_schema_2_is_upgraded_in_place_with_every_row(tmp_path: Path) -> None:
    """Schema 2 kept inline blocks in a WITHOUT ROWID table; opening such a database moves
    them to the table schema 3 has, in one transaction, and keeps every row."""
    path = tmp_path / "meta.db"
    with MetaState(path) as meta:
        meta.apply_batch([Entry(Init(CS, 0, 0, T0))])
        f = mkfile(meta, ROOT_INO, b"f")
        small = kept(0, 1, b"hello")
        ok(meta, blind(meta, f, (small,), 5))
        before = meta.dump()
    with sqlite3.connect(path, isolation_level=None) as db:  # as schema 2 left it
        db.executescript(
            "BEGIN;"
            "CREATE TABLE old (block_id BLOB PRIMARY KEY, data BLOB NOT NULL) WITHOUT ROWID;"
            "INSERT INTO old SELECT block_id, data FROM inline_blocks;"
            "DROP TABLE inline_blocks; ALTER TABLE old RENAME TO inline_blocks;"
            "PRAGMA user_version = 2; COMMIT;"
        )
    db.close()
    with MetaState(path) as meta:
        assert meta.dump() == before
        assert meta.query(ReadChunks(f, 0, 100))[1] == [small]
        ok(meta, blind(meta, mkfile(meta, ROOT_INO, b"g"), (kept(0, 2, b"more"),), 4))
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (3,)
        [(sql,)] = db.execute("SELECT sql FROM sqlite_master WHERE name = 'inline_blocks'")
        assert "WITHOUT ROWID" not in sql
    db.close()


def test_snapshot_is_a_full_copy(meta: MetaState, tmp_path: Path) -> None:
    _file_with_three_chunks(meta)
    ok(meta, SetXattr(ROOT_INO, b"user.x", b"1", 0, T0))
    meta.apply_batch([Entry(Mkdir(ROOT_INO, b"d", 0, 0, 0, T0), b"c", 1)], last_index=3)
    meta.snapshot_to(tmp_path / "snap.db")
    with MetaState(tmp_path / "snap.db") as copy:
        assert copy.dump() == meta.dump()
        assert copy.applied_index == 3
        assert copy.query(ReadDir(ROOT_INO, 0, 10)) == meta.query(ReadDir(ROOT_INO, 0, 10))


# --- determinism ------------------------------------------------------------------------------

# A small tree to start from, so that early commands have something to work on.
_SETUP: list[Command] = [
    Mkdir(ROOT_INO, b"a", 0o755, UID, GID, T0),  # 2
    Mkdir(ROOT_INO, b"b", 0o2755, UID, GID, T0),  # 3
    Mkdir(2, b"a", 0o755, UID, GID, T0),  # 4
    Mknod(ROOT_INO, b"c", REG, 0, UID, GID, T0),  # 5
    Mknod(2, b"b", REG, 0, UID, GID, T0),  # 6
    Mknod(3, b"a", REG, 0, UID, GID, T0),  # 7
    Symlink(3, b"c", b"a", UID, GID, T0),  # 8
    Mkdir(4, b"d", 0o755, UID, GID, T0),  # 9
    CommitChunks(7, (new(chunk(0, 1)), new(chunk(1, 2, 10))), CS + 10, None, None, None, None, T0),
    CommitChunks(5, (new(chunk(0, 3, 5)),), 5, None, None, None, None, T0),
]
_NAMES = st.sampled_from([b"a", b"b", b"c", b"d"])
_NOW = st.integers(T0, T0 + 100)


@st.composite
def _command(draw: st.DrawFn, dump: list[Any]) -> Command:
    """A command that often succeeds on the state in ``dump``: it names what exists there."""
    tables = dict((table, rows) for table, rows in dump)
    inos = st.sampled_from([row[0] for row in tables["inodes"]] + [999])
    dirs = st.sampled_from([row[0] for row in tables["inodes"] if stat.S_ISDIR(row[1])])
    files = st.sampled_from([row[0] for row in tables["inodes"] if stat.S_ISREG(row[1])] or [999])
    entries: st.SearchStrategy[tuple[int, bytes]] = st.sampled_from(
        [(row[0], row[1]) for row in tables["dentries"] or [(1, b"a")]]
    )
    block_ids = st.integers(0, 6).map(block)
    chunks = st.lists(
        st.builds(Chunk, st.integers(0, 3), block_ids, st.integers(0, CS), st.just(SUM)),
        max_size=3,
        unique_by=lambda c: c.idx,
    )
    now = draw(_NOW)
    parent, name = draw(entries)
    match draw(st.integers(0, 12)):
        case 0:
            mode = draw(st.sampled_from([REG, stat.S_IFIFO | 0o600]))
            return Mknod(draw(dirs), draw(_NAMES), mode, 0, UID, GID, now)
        case 1:
            return Mkdir(
                draw(dirs), draw(_NAMES), draw(st.sampled_from([0o755, 0o2700])), 1, 2, now
            )
        case 2:
            return Symlink(draw(dirs), draw(_NAMES), draw(_NAMES), UID, GID, now)
        case 3:
            return Link(draw(inos), draw(dirs), draw(_NAMES), now)
        case 4:
            return Unlink(parent, name, now)
        case 5:
            return Rmdir(parent, name, now)
        case 6 | 7:
            new_parent, new_name = draw(entries | st.tuples(dirs, _NAMES))
            flags = draw(st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]))
            return Rename(parent, name, new_parent, new_name, flags, now)
        case 8:
            size = draw(st.integers(0, 4 * CS))
            return Setattr(draw(files | inos), None, None, None, size, None, None, now)
        case 9:
            size = draw(st.integers(0, 4 * CS))
            bases = st.tuples(block_ids | st.just(b""), st.integers(0, CS))
            updates = tuple(ChunkUpdate(c, *draw(bases)) for c in draw(chunks))
            expect = draw(st.none() | st.integers(0, 4 * CS))
            return CommitChunks(draw(files | inos), updates, size, expect, None, None, None, now)
        case 10:
            flags = draw(st.sampled_from([0, XATTR_CREATE, XATTR_REPLACE]))
            return SetXattr(draw(inos), draw(_NAMES), draw(_NAMES), flags, now)
        case 11:
            return RemoveXattr(draw(inos), draw(_NAMES), now)
        case _:
            match draw(st.integers(0, 2)):
                case 0:
                    return Purge((draw(inos),))
                case 1:
                    return Abandon((draw(block_ids),), (draw(st.integers(0, CS)),))
            return ForgetGarbage((draw(block_ids),))


def _check_invariants(tables: dict[str, list[Any]]) -> None:
    """What must hold after any sequence of commands (``tables`` as in `MetaState.dump`)."""
    inodes = {row[0]: row for row in tables["inodes"]}
    dentries = tables["dentries"]
    garbage = {row[1] for row in tables["garbage"]}
    counters = dict(tables["counters"])
    assert counters["garbage_blocks"] == len(tables["garbage"])
    assert counters["garbage_bytes"] == sum(row[2] for row in tables["garbage"])
    for parent, _name, ino, _cookie in dentries:
        assert stat.S_ISDIR(inodes[parent][1])
        assert ino in inodes
    for ino, mode, nlink, *_ in inodes.values():
        entries = sum(1 for d in dentries if d[2] == ino)
        if stat.S_ISDIR(mode):
            subdirs = sum(1 for d in dentries if d[0] == ino and stat.S_ISDIR(inodes[d[2]][1]))
            assert nlink == 2 + subdirs
            assert entries == (0 if ino == ROOT_INO else 1)
        else:
            assert nlink == entries
    for ino, _client in tables["orphans"]:
        assert inodes[ino][2] == 0  # an orphan row names an inode without names
    abandoned = {row[0] for row in tables["abandoned"]}
    for ino, idx, block_id, length, _sum in tables["chunks"]:
        assert idx * CS + length <= inodes[ino][6]
        assert block_id not in garbage
        assert block_id not in abandoned


@settings(max_examples=60, deadline=None)
@given(st.data(), st.integers(5, 60), st.lists(st.integers(1, 20), max_size=5))
def test_same_commands_give_same_state(data: st.DataObject, count: int, cuts: list[int]) -> None:
    with (
        tempfile.TemporaryDirectory() as tmp,
        MetaState(Path(tmp) / "a.db") as a,
        MetaState(Path(tmp) / "b.db") as b,
    ):
        entries = [Entry(c) for c in (Init(CS, 0, 0, T0), *_SETUP)]
        outcomes_a = a.apply_batch(entries)
        used: set[bytes] = set()  # every block some file referenced at some point
        forgotten: set[bytes] = set()  # blocks the collector may have deleted
        for _ in range(count):  # one by one, each command drawn from the state so far
            command = data.draw(_command(a.dump()))
            entries.append(Entry(command))
            outcomes_a += a.apply_batch(entries[-1:])
            if isinstance(command, ForgetGarbage):
                forgotten.update(command.block_ids)
            tables = dict((table, rows) for table, rows in a.dump())
            _check_invariants(tables)
            chunks = {row[2] for row in tables["chunks"]}
            used |= chunks
            # No block is lost track of: still used, garbage, or deleted by the collector.
            assert used <= chunks | {row[1] for row in tables["garbage"]} | forgotten
        outcomes_b: list[Outcome] = []
        start = 0
        for cut in [*cuts, len(entries)]:  # the other replica batches differently
            outcomes_b += b.apply_batch(entries[start : start + cut])
            start += cut
        assert outcomes_a == outcomes_b
        assert a.dump() == b.dump()
        assert a.query(ReadDir(ROOT_INO, 0, 100)) == b.query(ReadDir(ROOT_INO, 0, 100))


def kept(idx: int, n: int, data: bytes) -> Chunk:
    """A chunk whose block the metadata keeps."""
    return Chunk(idx, block(n), len(data), checksum(data), data)


def test_a_small_files_block_is_kept_by_the_metadata(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    small = kept(0, 1, b"hello")
    ok(meta, blind(meta, f, (small,), 5))
    assert meta.query(ReadChunks(f, 0, 100))[1] == [small]  # the bytes come with the map
    # Replaced by a block on the storage nodes: the kept one goes at once, not to garbage.
    ok(
        meta,
        CommitChunks(f, (ChunkUpdate(chunk(0, 2), block(1), 5),), CS, None, None, None, None, T0),
    )
    assert meta.query(ReadChunks(f, 0, 100))[1] == [chunk(0, 2)]
    assert meta.query(Garbage(10)) == []
    assert not any(rows for table, rows in meta.dump() if table == "inline_blocks")
    # Removing a file removes the block the metadata kept for it.
    g = mkfile(meta, ROOT_INO, b"g")
    ok(meta, blind(meta, g, (kept(0, 3, b"bye"),), 3))
    ok(meta, Unlink(ROOT_INO, b"g", T0))
    ok(meta, Purge((g,)))
    assert not any(rows for table, rows in meta.dump() if table == "inline_blocks")
    assert meta.query(Garbage(10)) == []


def test_a_kept_block_must_be_whole_first_small_and_match_its_checksum(meta: MetaState) -> None:
    f = mkfile(meta, ROOT_INO, b"f")
    data = b"x" * 100
    for wrong in (checksum(b"y"), hashlib.sha256(b"y").digest()):
        fails(meta, blind(meta, f, (Chunk(0, block(1), 100, wrong, data),), 100), "EINVAL")
    # A block kept by a writer of version 12 or before carries sha256: a replayed log keeps it.
    ok(meta, blind(meta, f, (Chunk(0, block(1), 100, hashlib.sha256(data).digest(), data),), 100))
    fails(meta, blind(meta, f, (dataclasses.replace(kept(0, 1, data), length=99),), 99), "EINVAL")
    with pytest.raises(NodeError):
        kept(1, 1, data)  # only chunk 0
    with pytest.raises(NodeError):
        kept(0, 1, bytes(INLINE_MAX + 1))
