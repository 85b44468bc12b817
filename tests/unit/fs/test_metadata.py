"""The mount's metadata calls: a command forgets what it touched and keeps what it answered."""

from __future__ import annotations

from typing import Any, cast

from ringfs.fs.cluster import Cluster
from ringfs.fs.metacache import MetaCache
from ringfs.fs.metadata import Metadata
from ringfs.node.meta.commands import ROOT_INO, Attr, Command, Mknod, Setattr
from ringfs.node.meta.feed import Changes


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
