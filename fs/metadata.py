"""The mount's metadata calls, through its cache.

Every command of this mount goes to the leader through `apply`, which then brings the cache up
to date with what the command did, so the mount reads its own changes at once. Lookups and stats
are answered from `MetaCache` while it is fresh; what the leader answers to them, and the
directory pages it lists, are kept there.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ringfs.fs.chunkmaps import KnownMap
from ringfs.fs.cluster import Cluster
from ringfs.fs.metacache import MetaCache, touched
from ringfs.fs.writebehind import RIDERS, WriteBehind, result_of
from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import (
    RENAME_EXCHANGE,
    Attr,
    Batch,
    Chunk,
    Command,
    Delegate,
    DirEntry,
    GetAttr,
    Link,
    Lookup,
    Mkdir,
    Mknod,
    Query,
    ReadDir,
    Rename,
    Symlink,
)

#: Entries fetched per readdir round trip (the kernel asks for a few dozen at a time).
READDIR_PAGE = 256


class Metadata:
    """Commands and queries of one mount, with its cache of names and attributes."""

    def __init__(self, cluster: Cluster, cache: MetaCache, write_behind: bool = True) -> None:
        self.cluster = cluster
        self.cache = cache
        self.behind = WriteBehind(cluster, cache, write_behind)
        cluster.session_listeners.append(self._session_ended)

    def _session_ended(self, client_id: bytes) -> None:
        self.cache.new_session(client_id)
        self.behind.session_ended()

    async def apply(self, command: Command) -> Any:
        """Apply a command: answered here and queued if its outcome is known here (see
        `ringfs.fs.writebehind`); riding behind the queued changes if it changes no name;
        else sent alone once they are applied (`_command`)."""
        behind = self.behind
        answered, result = await behind.acknowledge(command)
        if answered:
            return result
        if behind.busy and isinstance(command, RIDERS):
            return await behind.ride(command)
        await behind.flushed()
        return await self._command(command)

    async def _command(self, command: Command) -> Any:
        """Apply a command (see `Cluster.meta_command`) and bring the cache up to date with it
        before returning: what it touched is forgotten, and the attributes the leader sent
        back of every inode it changed are kept (the kernel asks next: the directory's
        `getattr`, the `security.capability` probe before every write), except for an inode
        another client changed while the command was on its way (that change may be newer).
        The names it made or moved are known, so a directory whose names were all known still
        is (the feed does not repeat this mount's own name changes, and its own record spares
        what the answer kept)."""
        cache = self.cache
        inodes, names = touched(command)
        sent: Command = command
        if isinstance(command, Mkdir):
            # Born held by this mount, so that changes in it are answered here.
            command = sent = dataclasses.replace(command, ino=await self.behind.take_ino())
            if command.ino:
                sent = Batch((), (command, Delegate(command.ino)))
        seq = self.cluster.take_seq()
        cache.expect(seq)
        before, asked_at = cache.stamp(), cache.now()
        try:
            answer = await self.cluster.meta_command(sent, seq)
            result = answer.result
            if sent is not command:
                made, delegated = result
                result = result_of(command, made)
                if delegated.error is None:
                    self.behind.held.add(result.ino)
        except BaseException:
            cache.forget(inodes, names)
            cache.answered(seq, ())
            raise
        complete = cache.complete_among({parent for parent, _ in names})
        moved = [cache.inode_of(name) for name in names] if isinstance(command, Rename) else []
        fresh = {attr.ino: attr for attr in answer.attrs if cache.may_keep(attr.ino, before)}
        cache.forget(inodes, names)
        stamp = cache.stamp()
        for attr in fresh.values():
            cache.keep_attr(attr, stamp)
            cache.watch(attr.ino, answer.term, stamp, asked_at)
        cache.answered(seq, fresh)
        if isinstance(command, (Mknod, Mkdir, Symlink, Link)):
            parent, name = names[-1]
            if result.ino in fresh:
                cache.keep_name(parent, name, result.ino, stamp)
            else:
                complete.discard(parent)
        if isinstance(command, Mkdir) and result.ino in fresh:
            complete.add(result.ino)  # empty, and this mount saw it born
        if isinstance(command, Rename):
            complete -= self._renamed(command, moved, stamp)
        cache.mark_complete(complete)
        return result

    def _renamed(self, command: Rename, moved: list[int | None], stamp: int) -> set[int]:
        """Point the names a rename changed at their inodes; the directories where that is
        not known (the source was not cached) no longer count as complete."""
        source, target = moved
        if command.flags & RENAME_EXCHANGE:
            if source is None or target is None:
                return {command.parent, command.new_parent}
            self.cache.keep_name(command.parent, command.name, target, stamp)
        elif source is None:
            return {command.new_parent}
        self.cache.keep_name(command.new_parent, command.new_name, source, stamp)
        return set()

    async def query(self, query: Query) -> Any:
        """A query the cache does not answer, to the leader once it applied this mount's
        queued changes of the inode it asks about."""
        subjects = (getattr(query, "ino", None), getattr(query, "parent", None))
        await self.behind.drain_for(*(ino for ino in subjects if ino is not None))
        return await self.cluster.meta_query(query)

    async def lookup(self, parent: int, name: bytes) -> Attr:
        attr = self.cache.lookup(parent, name)
        if attr is None and self.cache.known_missing(parent, name):
            raise NodeError("ENOENT", "no such entry (known to this mount)")
        if attr is None:
            await self.behind.drain_for(parent)
            stamp = self.cache.stamp()
            attr = await self.cluster.meta_query(Lookup(parent, name))
            if self.behind.foresees(attr.ino):
                # Queued changes of this inode (a mkdir in it) are newer than the answer.
                await self.behind.flushed()
                stamp = self.cache.stamp()
                attr = await self.cluster.meta_query(Lookup(parent, name))
            self.cache.keep_entry(parent, name, attr, stamp)
        return attr

    async def getattr(self, ino: int) -> Attr:
        attr = self.cache.attr(ino)
        if attr is None:
            await self.behind.drain_for(ino)
            stamp = self.cache.stamp()
            attr = await self.cluster.meta_query(GetAttr(ino))
            self.cache.keep_attr(attr, stamp)
        return attr

    async def readdir(self, ino: int, after: int, limit: int) -> list[DirEntry]:
        """A page of a directory from the leader; its names and attributes are kept (an
        `ls -l` that follows asks for each of them), and a page that holds the whole
        directory lets the cache list it next time (`listing`). It waits for every queued
        change, not only those in this directory: a mkdir queued in an entry changes the
        entry's link count, and an older count must reach neither the cache nor the kernel."""
        await self.behind.flushed()
        stamp = self.cache.stamp()
        page: list[DirEntry] = await self.cluster.meta_query(ReadDir(ino, after, limit))
        whole = after == 0 and len(page) < limit
        self.cache.keep_listing(ino, ((entry.name, entry.attr) for entry in page), stamp, whole)
        return page

    def listing(self, ino: int) -> list[DirEntry] | None:
        """The whole directory from the cache, if it knows every name in it and their
        attributes (`MetaCache.listing`); the offsets are positions in this list."""
        entries = self.cache.listing(ino)
        if entries is None:
            return None
        return [DirEntry(offset, name, attr) for offset, (name, attr) in enumerate(entries, 1)]

    async def read_chunks(
        self, ino: int, known: KnownMap | None = None
    ) -> tuple[Attr, list[Chunk]]:
        """Attributes and chunk map: those this mount kept (`known`, a version and its map)
        if it watches the file and nothing of its own about it waits to be sent, else from the
        leader (see `Cluster.read_chunks`, and its `known`), which registers the watch. The
        attributes are kept: a `stat` after an open must not show an older file than the open
        does, whether or not the feed told of the change yet."""
        cache = self.cache
        if known is not None and cache.watching(ino) and not self.behind.foresees(ino):
            attr = cache.attr(ino)
            if attr is not None and attr.version == known[0]:
                return attr, known[1]
        await self.behind.drain_for(ino)
        stamp, asked_at = cache.stamp(), cache.now()
        attr, chunks, term = await self.cluster.read_chunks(ino, known)
        cache.keep_attr(attr, stamp)
        cache.watch(ino, term, stamp, asked_at)
        return attr, chunks

    def without_xattrs(self, ino: int) -> bool:
        """Whether the inode is known, now, to have no extended attributes."""
        attr = self.cache.attr(ino)
        return attr is not None and attr.xattrs == 0


class DirListing:
    """One open directory: the entries last read, so the kernel's readdir calls, a few dozen
    entries each, cost one query per `READDIR_PAGE` entries. A read from the start (offset 0:
    opendir or rewinddir) takes the whole directory from the cache if it can (then the later
    reads of this handle page through that copy, by its own offsets), else asks the leader."""

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self._after = 0
        self._page: list[DirEntry] | None = None
        # Whether entries past the last of `_page` may exist (only in the leader's pages).
        self._more = False

    async def read(self, meta: Metadata, after: int) -> tuple[list[DirEntry], bool]:
        """The entries after offset `after` this listing holds or fetches, and whether more
        may follow them."""
        rest = self._buffered(after)
        if rest is None:
            whole = meta.listing(self.ino) if after == 0 else None
            if whole is not None:
                self._page, self._more = whole, False
            else:
                self._page = await meta.readdir(self.ino, after, READDIR_PAGE)
                self._more = len(self._page) == READDIR_PAGE
            self._after = after
            rest = self._page
        return rest, self._more

    def _buffered(self, after: int) -> list[DirEntry] | None:
        if self._page is None or after == 0 or after < self._after:
            return None
        rest = [entry for entry in self._page if entry.offset > after]
        return rest if rest or not self._more else None
