"""The mount's metadata calls, through its cache.

Every command of this mount goes to the leader through `apply`, which then forgets what the
command touched, so the mount reads its own changes at once (the change feed tells the same a
few milliseconds later). Lookups, stats and directory listings are answered from `MetaCache`
while it is fresh, and what the leader answers is kept there.
"""

from __future__ import annotations

from typing import Any

from ringfs.fs.cluster import Cluster
from ringfs.fs.metacache import MetaCache, touched
from ringfs.node.meta.commands import (
    Attr,
    Chunk,
    Command,
    DirEntry,
    GetAttr,
    Lookup,
    Query,
    ReadDir,
)

#: readdir's `.` and `..`: readdirplus links no inode for them (fuse_direntplus_link skips
#: them), and they are not names to cache.
DOTS = (b".", b"..")


class Metadata:
    """Commands and queries of one mount, with its cache of names and attributes."""

    def __init__(self, cluster: Cluster, cache: MetaCache) -> None:
        self.cluster = cluster
        self.cache = cache

    async def apply(self, command: Command) -> Any:
        """Apply a command (see `Cluster.meta_apply`); what it touched is no longer cached."""
        try:
            return await self.cluster.meta_apply(command)
        finally:
            self.cache.forget(*touched(command))

    async def query(self, query: Query) -> Any:
        """A query the cache does not answer, straight to the leader."""
        return await self.cluster.meta_query(query)

    async def lookup(self, parent: int, name: bytes) -> Attr:
        attr = self.cache.lookup(parent, name)
        if attr is None:
            stamp = self.cache.stamp()
            attr = await self.cluster.meta_query(Lookup(parent, name))
            self.cache.keep_entry(parent, name, attr, stamp)
        return attr

    async def getattr(self, ino: int) -> Attr:
        attr = self.cache.attr(ino)
        if attr is None:
            stamp = self.cache.stamp()
            attr = await self.cluster.meta_query(GetAttr(ino))
            self.cache.keep_attr(attr, stamp)
        return attr

    async def readdir(self, ino: int, after: int, limit: int) -> list[DirEntry]:
        """A page of a directory, always from the leader; its names and attributes are kept
        (an `ls -l` that follows asks for each of them)."""
        stamp = self.cache.stamp()
        page: list[DirEntry] = await self.cluster.meta_query(ReadDir(ino, after, limit))
        for entry in page:
            if entry.name not in DOTS:
                self.cache.keep_entry(ino, entry.name, entry.attr, stamp)
        return page

    async def read_chunks(self, ino: int) -> tuple[Attr, list[Chunk]]:
        """Attributes and chunk map, from the leader (see `Cluster.read_chunks`)."""
        return await self.cluster.read_chunks(ino)

    def without_xattrs(self, ino: int) -> bool:
        """Whether the inode is known, now, to have no extended attributes."""
        attr = self.cache.attr(ino)
        return attr is not None and attr.xattrs == 0
