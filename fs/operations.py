"""FUSE glue: each pyfuse3 handler becomes metadata commands, queries and file-state calls.

No socket or msgpack code lives here. Every handler runs inside `fuse_errors`, the single
failure-to-errno translation point. Permission checks are the kernel's (`default_permissions`):
the attributes we return are what it checks against, as on ext4.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import pyfuse3
import trio
from pyfuse3 import FileHandleT, FileNameT, InodeT

from ringfs.fs.chunkmaps import ChunkMaps
from ringfs.fs.cluster import Cluster
from ringfs.fs.errors import fuse_errors
from ringfs.fs.files import AttrUpdate, FileContext, FileState
from ringfs.fs.metacache import DOTS
from ringfs.fs.metadata import DirListing
from ringfs.node.errors import NodeError, ProtocolError, Unavailable
from ringfs.node.meta.commands import (
    NAME_MAX,
    ROOT_INO,
    Attr,
    Command,
    FsInfo,
    FsStats,
    GetXattr,
    Link,
    ListXattr,
    Mkdir,
    Mknod,
    Purge,
    Query,
    ReadLink,
    RemoveXattr,
    Rename,
    Rmdir,
    Setattr,
    SetXattr,
    Symlink,
    Unlink,
)
from ringfs.node.meta.effects import only_adds

log = logging.getLogger(__name__)

# POSIX ACLs are not kept: the kernel would not enforce them (no FUSE_POSIX_ACL), so refusing
# them tells tools like `cp -a` the truth instead of keeping rules nobody applies.
ACL_PREFIX = b"system.posix_acl_"
# SELinux labels are not kept either. Both are refused with EOPNOTSUPP whether read or written,
# as ext4 -o noacl refuses ACLs and a filesystem without per-file labels refuses SELinux's:
# `ls -l` asks for both on every file until told they are not supported, then stops asking.
SELINUX_LABEL = b"security.selinux"
# The xattr namespaces Linux has; FUSE passes any name through, so refuse the others as ext4 does.
XATTR_NAMESPACES = (b"user.", b"trusted.", b"security.", ACL_PREFIX)
# st_blksize: the I/O size we ask tools like cp to use.
PREFERRED_IO_SIZE = 1024 * 1024
# Seconds an orphan waits for others to share its Purge, and the most one Purge carries.
PURGE_DELAY = 0.1
PURGE_BATCH = 1024


@dataclass(frozen=True)
class CacheTimes:
    """How long the kernel may trust attributes and names (other clients change them)."""

    attr_timeout: float = 1.0
    entry_timeout: float = 1.0


class KernelCache(Protocol):
    """What the kernel keeps of our files, and how to make it forget (`ringfs.fs.mount`)."""

    def forget_attrs(self, ino: int) -> None:
        """Drop the inode's cached attributes before this call returns."""

    def forget_data(self, ino: int) -> None:
        """Drop the inode's cached pages (and attributes), soon."""

    def forget_entry(self, parent: int, name: bytes) -> None:
        """Drop the kernel's entry for `name` in directory `parent`, soon."""


class Operations(pyfuse3.Operations):
    """The ringfs mount."""

    enable_writeback_cache = False

    def __init__(
        self, cluster: Cluster, files: FileContext, times: CacheTimes, kernel: KernelCache
    ) -> None:
        super().__init__()
        self.cluster = cluster
        self.files = files
        self.times = times
        self.kernel = kernel
        self._open: dict[int, FileState] = {}
        # Maps of files no longer open, for their next open (see `ringfs.fs.chunkmaps`).
        self._maps = ChunkMaps()
        self._handles: dict[int, FileState] = {}
        self._dirs: dict[int, DirListing] = {}
        # Handles opened with O_APPEND: their writes go to the end of the file.
        self._appending: set[int] = set()
        self._next_fh = 1
        self._lookups: dict[int, int] = {}
        self._orphans: set[int] = set()
        # Orphans waiting for the next Purge (one is scheduled while this is not empty).
        self._to_purge: set[int] = set()
        # Inodes whose open is loading their chunk map (not in `_open` yet), and how many.
        self._opening: dict[int, int] = {}
        # Version of each file's data the kernel page cache last saw, to keep it across opens.
        self._cached_versions: dict[int, int] = {}
        # Version of the attributes we last gave the kernel for each inode it knows.
        self._told_versions: dict[int, int] = {}
        # The newest version of each inode's data this client has seen (open or flush).
        self._known_versions: dict[int, int] = {}
        #: Set when the kernel's INIT is answered: what the reply settles (such as the
        #: readahead window, `ringfs.fs.kernel_readahead`) may be changed after it.
        self.initialized = trio.Event()

    def init(self) -> None:
        # Called by pyfuse3 while it answers INIT; tasks woken here run after the answer.
        self.initialized.set()

    # -- helpers -----------------------------------------------------------------------------

    async def _apply(self, command: Command) -> Any:
        return await self.files.meta.apply(command)

    async def _query(self, query: Query) -> Any:
        return await self.files.meta.query(query)

    def changed_elsewhere(self, inodes: Sequence[int], names: Sequence[tuple[int, bytes]]) -> None:
        """Another client changed these: the kernel forgets what it holds of them."""
        for ino in inodes:
            if ino in self._lookups:
                self.kernel.forget_attrs(ino)
        for parent, name in names:
            if parent in self._lookups or parent == ROOT_INO:
                self.kernel.forget_entry(parent, name)

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        state = self._open.get(attr.ino)
        if state is not None:
            attr = state.overlay(attr)
        self._told_versions[attr.ino] = attr.version
        entry = pyfuse3.EntryAttributes()
        entry.st_ino = attr.ino
        entry.generation = 0
        entry.entry_timeout = self.times.entry_timeout
        entry.attr_timeout = self.times.attr_timeout
        entry.st_mode = attr.mode
        entry.st_nlink = attr.nlink
        entry.st_uid = attr.uid
        entry.st_gid = attr.gid
        entry.st_rdev = attr.rdev
        entry.st_size = attr.size
        entry.st_blksize = PREFERRED_IO_SIZE
        entry.st_blocks = attr.blocks
        entry.st_atime_ns = attr.atime_ns
        entry.st_mtime_ns = attr.mtime_ns
        entry.st_ctime_ns = attr.ctime_ns
        return entry

    def _remember(self, attr: Attr) -> pyfuse3.EntryAttributes:
        """An entry the kernel will hold a reference to (lookup count + 1)."""
        self._lookups[attr.ino] = self._lookups.get(attr.ino, 0) + 1
        return self._entry(attr)

    def _unlinked(self, attr: Attr | None) -> None:
        """Note an inode that lost its last name; purge it once no handle here has it open.

        The purge runs in the background: the unlink that caused it has already succeeded,
        and a purge that fails is retried at unmount.
        """
        if attr is None or attr.nlink > 0 or stat.S_ISDIR(attr.mode):
            return
        self._orphans.add(attr.ino)
        if attr.ino not in self._open:
            self._purge_soon(attr.ino)

    def _purge_soon(self, ino: int) -> None:
        """Purge `ino` within `PURGE_DELAY`, together with every other orphan by then: `rm -r`
        of many files costs one replicated command per file, not two."""
        if not self._to_purge:
            self.files.nursery.start_soon(self._purge_later, name="purge")
        self._to_purge.add(ino)

    async def _purge_later(self) -> None:
        await trio.sleep(PURGE_DELAY)
        # One opened again meanwhile (through /proc/PID/fd), or being opened, is purged at its
        # last release.
        inos = sorted(self._to_purge - self._open.keys() - self._opening.keys())
        self._to_purge.clear()
        await self._purge(inos)

    async def _purge(self, inos: Sequence[int]) -> None:
        """Delete unlinked inodes nobody here uses; on failure they stay listed for unmount."""
        for start in range(0, len(inos), PURGE_BATCH):
            batch = tuple(inos[start : start + PURGE_BATCH])
            try:
                await self._apply(Purge(batch))
            except (NodeError, Unavailable, ProtocolError) as exc:
                log.warning("%d inodes: purge failed (%s); retried at unmount", len(batch), exc)
            else:
                self._orphans.difference_update(batch)

    async def flush_open_files(self) -> None:
        """At unmount: store what open files hold, or say exactly what could not be stored."""
        for state in list(self._open.values()):
            if not state.dirty:
                continue
            try:
                await self._flush(state)
            except (NodeError, Unavailable, ProtocolError) as exc:
                spans = state.uncommitted()
                shown = ", ".join(f"{start}-{end - 1}" for start, end in spans[:8])
                log.error(
                    "unmounting with inode %d open: %d bytes written since its last flush "
                    "are lost (bytes %s%s): %s",
                    state.ino,
                    sum(end - start for start, end in spans),
                    shown,
                    ", ..." if len(spans) > 8 else "",
                    exc,
                )

    async def purge_orphans(self) -> None:
        """At unmount: the kernel forgets everything, so unlinked inodes can go."""
        await self._purge(sorted(self._orphans))

    # -- names -------------------------------------------------------------------------------

    async def lookup(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        with fuse_errors("lookup"):
            if len(name) > NAME_MAX:
                raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
            return self._remember(await self.files.meta.lookup(parent_inode, name))

    async def forget(self, inode_list: Sequence[tuple[InodeT, int]]) -> None:
        for ino, count in inode_list:
            left = self._lookups.get(ino, 0) - count
            if left > 0:
                self._lookups[ino] = left
                continue
            self._lookups.pop(ino, None)
            self._told_versions.pop(ino, None)
            self._known_versions.pop(ino, None)
            if ino not in self._open:
                # The kernel dropped the inode, and its page cache with it.
                self._cached_versions.pop(ino, None)

    async def getattr(
        self, inode: InodeT, ctx: pyfuse3.RequestContext | None = None
    ) -> pyfuse3.EntryAttributes:
        with fuse_errors("getattr"):
            return self._entry(await self.files.meta.getattr(inode))

    async def setattr(
        self,
        inode: InodeT,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: FileHandleT | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        with fuse_errors("setattr"):
            command = Setattr(
                inode,
                attr.st_mode if fields.update_mode else None,
                attr.st_uid if fields.update_uid else None,
                attr.st_gid if fields.update_gid else None,
                attr.st_size if fields.update_size else None,
                attr.st_atime_ns if fields.update_atime else None,
                attr.st_mtime_ns if fields.update_mtime else None,
                0,
            )
            return self._entry(await self._setattr(command))

    async def _setattr(self, command: Setattr) -> Attr:
        """Apply a Setattr, keeping this client's state of the file (if open) consistent.

        Times and a mode that only adds permissions, set on a file with unflushed writes,
        ride with the commit of those writes (see `FileState.defer`), and so does an owner
        that is the owner already (`tar x` as root sets it for every file); a mode that takes
        permissions away, and a new owner, take effect at once everywhere. A size, owner or
        time change applied now first commits our own writes and deferred changes, so that
        their commit cannot undo it; a truncation also holds writes off until the new size is
        in place.
        """
        state = self._open.get(command.ino)
        if state is None:
            result: Attr = await self._apply(command)
            return result
        if command.size is not None:
            async with state.exclusive():
                await state.flush()
                result = await self._apply(command)
                state.truncated(result)
            return result
        update = AttrUpdate(command.atime_ns, command.mtime_ns, command.mode)
        if state.dirty and only_adds(state.overlay(state.attr), command):
            return state.defer(update)
        if update.atime_ns is not None or update.mtime_ns is not None or state.deferred_changes:
            await state.flush()
        result = await self._apply(command)
        state.attr = result
        return result

    async def readlink(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileNameT:
        with fuse_errors("readlink"):
            link: FileNameT = await self._query(ReadLink(inode))
            return link

    async def mknod(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        mode: int,
        rdev: int,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        with fuse_errors("mknod"):
            attr = await self._apply(Mknod(parent_inode, name, mode, rdev, ctx.uid, ctx.gid, 0))
            return self._remember(attr)

    async def mkdir(
        self, parent_inode: InodeT, name: FileNameT, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        with fuse_errors("mkdir"):
            attr = await self._apply(Mkdir(parent_inode, name, mode, ctx.uid, ctx.gid, 0))
            return self._remember(attr)

    async def symlink(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        target: FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        with fuse_errors("symlink"):
            attr = await self._apply(Symlink(parent_inode, name, target, ctx.uid, ctx.gid, 0))
            return self._remember(attr)

    async def link(
        self,
        inode: InodeT,
        new_parent_inode: InodeT,
        new_name: FileNameT,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        with fuse_errors("link"):
            attr: Attr = await self._apply(Link(inode, new_parent_inode, new_name, 0))
            self._orphans.discard(attr.ino)
            return self._remember(attr)

    async def unlink(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        with fuse_errors("unlink"):
            self._unlinked(await self._apply(Unlink(parent_inode, name, 0)))

    async def rmdir(
        self, parent_inode: InodeT, name: FileNameT, ctx: pyfuse3.RequestContext
    ) -> None:
        with fuse_errors("rmdir"):
            await self._apply(Rmdir(parent_inode, name, 0))

    async def rename(
        self,
        parent_inode_old: InodeT,
        name_old: FileNameT,
        parent_inode_new: InodeT,
        name_new: FileNameT,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        with fuse_errors("rename"):
            command = Rename(parent_inode_old, name_old, parent_inode_new, name_new, flags, 0)
            self._unlinked(await self._apply(command))

    # -- directories -------------------------------------------------------------------------

    async def opendir(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> FileHandleT:
        fh = self._next_fh
        self._next_fh += 1
        self._dirs[fh] = DirListing(inode)
        return FileHandleT(fh)

    async def readdir(self, fh: FileHandleT, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        with fuse_errors("readdir"):
            listing, after = self._dirs[fh], start_id
            while True:
                entries, more = await listing.read(self.files.meta, after)
                for entry in entries:
                    if not pyfuse3.readdir_reply(
                        token, entry.name, self._entry(entry.attr), entry.offset
                    ):
                        return
                    if entry.name not in DOTS:
                        # The kernel keeps (and later forgets) an inode for every other entry.
                        self._lookups[entry.attr.ino] = self._lookups.get(entry.attr.ino, 0) + 1
                if not more or not entries:
                    return
                after = entries[-1].offset

    async def releasedir(self, fh: FileHandleT) -> None:
        del self._dirs[fh]

    async def fsyncdir(self, fh: FileHandleT, datasync: bool) -> None:
        with fuse_errors("fsyncdir"):
            # Changes answered before the leader had them are committed now.
            await self.files.meta.behind.drain()

    # -- files -------------------------------------------------------------------------------

    async def _state(self, inode: int) -> FileState:
        """This client's state of a file being opened, with the committed chunk map as it is
        now (close-to-open: an open sees every close that came before it, in any client): the
        map kept of a file the mount watches, else read again."""
        self._opening[inode] = self._opening.get(inode, 0) + 1
        try:
            known = None if inode in self._open else self._maps.get(inode)
            attr, chunks = await self.files.meta.read_chunks(inode, known)
            while attr.version < self._known_versions.get(inode, 0):
                # Read before a commit of ours that answered first: read again.
                attr, chunks = await self.files.meta.read_chunks(inode)
        finally:
            if self._opening[inode] == 1:
                del self._opening[inode]
            else:
                self._opening[inode] -= 1
        state = self._open.get(inode)
        if state is None:
            state = self._open[inode] = FileState(self.files, attr, chunks)
        else:
            state.refresh(attr, chunks)
        return state

    def _new_handle(self, state: FileState, flags: int) -> FileHandleT:
        fh = self._next_fh
        self._next_fh += 1
        self._handles[fh] = state
        if flags & os.O_APPEND:
            self._appending.add(fh)
        state.open_count += 1
        return fh

    async def open(
        self, inode: InodeT, flags: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.FileInfo:
        with fuse_errors("open"):
            if flags & os.O_TRUNC:
                # libfuse enables FUSE_ATOMIC_O_TRUNC: the kernel sends no setattr for O_TRUNC.
                await self._setattr(Setattr(inode, None, None, None, 0, None, None, 0))
            state = await self._state(inode)
            version = state.attr.version
            if self._told_versions.get(inode, version) != version:
                # Its size bounds what the kernel reads: it must not be an older one.
                self.kernel.forget_attrs(inode)
            # Close-to-open: keep the kernel's cached pages only if the data did not change.
            keep = self._cached_versions.get(inode) == version
            self._cached_versions[inode] = self._known_versions[inode] = version
            return pyfuse3.FileInfo(fh=self._new_handle(state, flags), keep_cache=keep)

    async def create(
        self,
        parent_inode: InodeT,
        name: FileNameT,
        mode: int,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        with fuse_errors("create"):
            mode = stat.S_IFREG | stat.S_IMODE(mode)
            attr: Attr = await self._apply(Mknod(parent_inode, name, mode, 0, ctx.uid, ctx.gid, 0))
            state = self._open[attr.ino] = FileState(self.files, attr, [])
            self._cached_versions[attr.ino] = attr.version
            info = pyfuse3.FileInfo(fh=self._new_handle(state, flags), keep_cache=True)
            return info, self._remember(attr)

    # pyfuse3 replies with any buffer it is given (`PyObject_GetBuffer`): a view of a cached
    # block reaches the kernel without a copy.
    async def read(  # type: ignore[override]
        self, fh: FileHandleT, off: int, size: int
    ) -> bytes | memoryview:
        with fuse_errors("read"):
            return await self._handles[fh].read(off, size)

    async def write(self, fh: FileHandleT, off: int, buf: bytes) -> int:
        with fuse_errors("write"):
            return await self._handles[fh].write(off, buf, append=fh in self._appending)

    async def _flush(self, state: FileState) -> None:
        before = state.attr.version
        attr = await state.flush()
        self._known_versions[state.ino] = attr.version
        if state.cache_stale:
            # Another client changed the file too: what the kernel cached of it may be stale.
            state.cache_stale = False
            self._cached_versions.pop(state.ino, None)  # the next open drops the pages
            self.kernel.forget_data(state.ino)  # and handles open now see the new ones soon
        elif attr.version != before and state.ino in self._cached_versions:
            # Only our own writes changed it, and the kernel saw them go by.
            self._cached_versions[state.ino] = attr.version

    async def flush(self, fh: FileHandleT) -> None:
        with fuse_errors("flush"):
            await self._flush(self._handles[fh])

    async def fsync(self, fh: FileHandleT, datasync: bool) -> None:
        with fuse_errors("fsync"):
            await self._flush(self._handles[fh])
            # Its attributes too, if this mount answered a change of them itself.
            await self.files.meta.behind.drain()

    async def release(self, fh: FileHandleT) -> None:
        state = self._handles.pop(fh)
        self._appending.discard(fh)
        state.open_count -= 1
        if state.open_count:
            return
        state.closing += 1
        try:
            # A FLUSH came before, at the close, and stored everything written until then:
            # only writes since (a mapping's pages written back later) are left to store, or
            # a commit of them that came in between left to note.
            if state.dirty or state.attr.version != self._known_versions.get(state.ino):
                await self._flush(state)
        except (NodeError, Unavailable, ProtocolError) as exc:
            log.error("inode %d: data written since the last flush is lost: %s", state.ino, exc)
            if not state.open_count and state.closing == 1:
                state.discard()  # nobody else will flush it
        finally:
            state.closing -= 1
        if state.open_count or state.closing:
            return  # opened again while we flushed, or another last release still flushes
        del self._open[state.ino]
        if state.ino in self._orphans:
            self._purge_soon(state.ino)
        elif (kept := state.committed_map()) is not None:
            self._maps.put(state.ino, *kept)

    # -- filesystem --------------------------------------------------------------------------

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        with fuse_errors("statfs"):
            info: FsStats = await self._query(FsInfo())
            reachable = [s for _, s in await self.cluster.node_capacity() if s is not None]
            copies = max(1, self.cluster.map.replica_count())
            block = 4096
            result = pyfuse3.StatvfsData()
            result.f_bsize = PREFERRED_IO_SIZE
            result.f_frsize = block
            result.f_blocks = sum(s["capacity"] for s in reachable) // copies // block
            result.f_bfree = sum(s["free"] for s in reachable) // copies // block
            result.f_bavail = result.f_bfree
            result.f_files = info.inode_count + 2**32
            result.f_ffree = 2**32
            result.f_favail = result.f_ffree
            result.f_namemax = NAME_MAX
            return result

    # -- extended attributes -----------------------------------------------------------------

    async def setxattr(
        self, inode: InodeT, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        with fuse_errors("setxattr"):
            _check_xattr_namespace(name)
            await self._apply(SetXattr(inode, name, value, 0, 0))

    async def getxattr(self, inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        with fuse_errors("getxattr"):
            _check_xattr_namespace(name)
            if self.files.meta.without_xattrs(inode):
                raise pyfuse3.FUSEError(errno.ENODATA)
            return cast(bytes, await self._query(GetXattr(inode, name)))

    async def listxattr(self, inode: InodeT, ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        with fuse_errors("listxattr"):
            if self.files.meta.without_xattrs(inode):
                return []
            return cast(list[bytes], await self._query(ListXattr(inode)))

    async def removexattr(self, inode: InodeT, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        with fuse_errors("removexattr"):
            _check_xattr_namespace(name)
            await self._apply(RemoveXattr(inode, name, 0))


def _check_xattr_namespace(name: bytes) -> None:
    """EOPNOTSUPP for a name outside the namespaces Linux knows, as ext4 answers, and for the
    names ringfs does not keep."""
    unkept = name.startswith(ACL_PREFIX) or name == SELINUX_LABEL
    if unkept or not name.startswith(XATTR_NAMESPACES):
        raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
