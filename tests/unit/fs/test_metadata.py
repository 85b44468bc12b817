"""The mount's metadata calls: a command forgets what it touched and keeps what it answered."""

from __future__ import annotations

import dataclasses
from typing import Any, cast

import pytest

from ringfs.fs.cluster import Cluster
from ringfs.fs.metacache import MetaCache
from ringfs.fs.metadata import Metadata
from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import (
    RENAME_EXCHANGE,
    ROOT_INO,
    Attr,
    Command,
    Mkdir,
    Mknod,
    Rename,
    Setattr,
    Unlink,
)
from ringfs.node.meta.feed import Change, Changes


def attr(ino: int, size: int = 0) -> Attr:
    return Attr(ino, 0o100644, 1, 0, 0, 0, size, 0, 1, 1, 1, 1, 0)


class Leader:
    """Answers each command with the next prepared result."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)

    async def meta_apply(self, command: Command) -> Any:
        return self.results.pop(0)


def metadata(leader: Leader) -> Metadata:
    cache = MetaCache(b"m" * 16, clock=lambda: 0.0)
    cache.apply(Changes(1, False, ()), sent_at=0.0)
    return Metadata(cast(Cluster, leader), cache)


async def test_a_new_file_is_known_by_name_and_attributes() -> None:
    meta = metadata(Leader(attr(7)))
    await meta.apply(Mknod(ROOT_INO, b"new", 0o100644, 0, 0, 0, 0))
    assert meta.cache.lookup(ROOT_INO, b"new") == attr(7)
    assert meta.without_xattrs(7)  # the kernel's security.capability probe before a write


async def test_a_change_replaces_what_was_cached() -> None:
    meta = metadata(Leader(attr(7, size=10)))
    meta.cache.keep_attr(attr(7), meta.cache.stamp())
    await meta.apply(Setattr(7, None, None, None, 10, None, None, 0))
    assert meta.cache.attr(7) == attr(7, size=10)


def dir_attr(ino: int) -> Attr:
    return Attr(ino, 0o040755, 2, 0, 0, 0, 4096, 8, 1, 1, 1, 1, 0)


async def test_a_directory_this_mount_made_knows_which_names_do_not_exist() -> None:
    meta = metadata(Leader(dir_attr(5), attr(6), attr(6), None))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))
    assert meta.cache.known_missing(5, b"anything")
    await meta.apply(Mknod(5, b"a", 0o100644, 0, 0, 0, 0))
    assert not meta.cache.known_missing(5, b"a")
    assert meta.cache.known_missing(5, b"b")
    with pytest.raises(NodeError, match="ENOENT"):
        await meta.lookup(5, b"b")  # answered without the leader
    await meta.apply(Rename(5, b"a", 5, b"b", 0, 0))  # answers the replaced inode: none
    assert meta.cache.known_missing(5, b"a")
    assert meta.cache.inode_of((5, b"b")) == 6
    await meta.apply(Unlink(5, b"b", 0))
    assert meta.cache.known_missing(5, b"b")


async def test_a_change_by_another_client_makes_a_directory_unknown_again() -> None:
    meta = metadata(Leader(dir_attr(5)))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))
    own = Change(2, meta.cache.client_id, (5,), ((5, b"x"),))
    meta.cache.apply(Changes(2, False, (own,)), sent_at=0.0)
    assert meta.cache.known_missing(5, b"y")  # its own change: already known
    other = Change(3, b"o" * 16, (5,), ((5, b"x"),))
    meta.cache.apply(Changes(3, False, (other,)), sent_at=0.0)
    assert not meta.cache.known_missing(5, b"y")


async def test_a_failed_command_makes_its_directories_unknown() -> None:
    meta = metadata(Leader(dir_attr(5)))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))

    class Refusing(Leader):
        async def meta_apply(self, command: Command) -> Any:
            raise NodeError("EEXIST", "")

    meta.cluster = cast(Cluster, Refusing())
    with pytest.raises(NodeError):
        await meta.apply(Mknod(5, b"a", 0o100644, 0, 0, 0, 0))
    assert not meta.cache.known_missing(5, b"b")


async def test_a_rename_from_a_name_not_cached_makes_the_target_directory_unknown() -> None:
    meta = metadata(Leader(dir_attr(5), None))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))
    meta.cache.mark_complete({ROOT_INO})
    await meta.apply(Rename(ROOT_INO, b"elsewhere", 5, b"here", 0, 0))
    assert not meta.cache.known_missing(5, b"other")
    assert meta.cache.known_missing(ROOT_INO, b"elsewhere")


async def test_an_exchange_swaps_the_names() -> None:
    meta = metadata(Leader(dir_attr(5), attr(6), attr(7), None))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))
    await meta.apply(Mknod(5, b"a", 0o100644, 0, 0, 0, 0))
    await meta.apply(Mknod(5, b"b", 0o100644, 0, 0, 0, 0))
    await meta.apply(Rename(5, b"a", 5, b"b", RENAME_EXCHANGE, 0))
    assert (meta.cache.inode_of((5, b"a")), meta.cache.inode_of((5, b"b"))) == (7, 6)
    assert meta.cache.known_missing(5, b"c")


async def test_the_directory_a_name_was_made_in_is_worked_out_not_asked_for() -> None:
    made = dataclasses.replace(dir_attr(9), ctime_ns=50, mtime_ns=50)
    meta = metadata(Leader(made, dataclasses.replace(attr(10), ctime_ns=60)))
    meta.cache.keep_attr(dir_attr(5), meta.cache.stamp())  # mtime and ctime 1, nlink 2
    await meta.apply(Mkdir(5, b"sub", 0o755, 0, 0, 0))
    assert meta.cache.attr(5) == dataclasses.replace(dir_attr(5), nlink=3, mtime_ns=50, ctime_ns=50)
    await meta.apply(Unlink(5, b"gone", 0))
    assert meta.cache.attr(5) == dataclasses.replace(dir_attr(5), nlink=3, mtime_ns=60, ctime_ns=60)


async def test_a_directory_read_after_the_command_is_not_counted_twice() -> None:
    meta = metadata(Leader(dataclasses.replace(dir_attr(9), ctime_ns=50)))
    after = dataclasses.replace(dir_attr(5), nlink=3, mtime_ns=50, ctime_ns=50)
    meta.cache.keep_attr(after, meta.cache.stamp())  # a getattr answered after the mkdir
    await meta.apply(Mkdir(5, b"sub", 0o755, 0, 0, 0))
    assert meta.cache.attr(5) is None  # asked for again, not worked out from the wrong base
