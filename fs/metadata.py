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
    Mkdir,
    Mknod,
    Query,
    ReadDir,
    Symlink,
)

#: Entries fetched per readdir round trip (the kernel asks for a few dozen at a time).
READDIR_PAGE = 256
#: readdir's `.` and `..`: readdirplus links no inode for them (fuse_direntplus_link skips
#: them), and they are not names to cache.
DOTS = (b".", b"..")


class Metadata:
    """Commands and queries of one mount, with its cache of names and attributes."""

    def __init__(self, cluster: Cluster, cache: MetaCache) -> None:
        self.cluster = cluster
        self.cache = cache

    async def apply(self, command: Command) -> Any:
        """Apply a command (see `Cluster.meta_apply`). What it touched is no longer cached, and
        the attributes it answered with are (the kernel asks for them next: `getattr`, and the
        `security.capability` probe before every write)."""
        try:
            result = await self.cluster.meta_apply(command)
        finally:
            self.cache.forget(*touched(command))
        if isinstance(result, Attr):
            stamp = self.cache.stamp()
            if isinstance(command, (Mknod, Mkdir, Symlink)):
                self.cache.keep_entry(command.parent, command.name, result, stamp)
            else:
                self.cache.keep_attr(result, stamp)
        return result

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


class DirListing:
    """One open directory: the page of entries last read from the leader, so the kernel's
    readdir calls, a few dozen entries each, cost one query per `READDIR_PAGE` entries. A read
    from the start (offset 0: opendir or rewinddir) always asks the leader again."""

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self._after = 0
        self._page: list[DirEntry] | None = None

    async def read(self, meta: Metadata, after: int) -> tuple[list[DirEntry], bool]:
        """The entries after offset `after` this listing holds or fetches, and whether more
        may follow them."""
        rest = self._buffered(after)
        if rest is None:
            self._page = await meta.readdir(self.ino, after, READDIR_PAGE)
            self._after = after
            rest = self._page
        return rest, len(self._page or ()) == READDIR_PAGE

    def _buffered(self, after: int) -> list[DirEntry] | None:
        if self._page is None or after == 0 or after < self._after:
            return None
        rest = [entry for entry in self._page if entry.offset > after]
        return rest if rest or len(self._page) < READDIR_PAGE else None
