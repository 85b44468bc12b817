"""What a namespace command does to attributes, as pure functions of attributes.

The state machine (`ringfs.node.meta.state`) applies these rules to its rows; a mount that
acknowledges a change in a directory it holds before the leader applies it
(`ringfs.fs.writebehind`) works out the same attributes from its cache with the same functions,
so what it shows meanwhile is what everyone sees once the change is committed.
"""

from __future__ import annotations

import dataclasses
import stat

from ringfs.node.meta import commands as cmd
from ringfs.node.meta.commands import Attr

#: st_size and st_blocks of a directory, as ext4 reports a one-block directory.
DIR_SIZE = 4096
DIR_BLOCKS = 8


def created_mode(command: cmd.Mknod | cmd.Mkdir | cmd.Symlink) -> int:
    """The mode a create asks for, with its file type, before inheritance."""
    match command:
        case cmd.Mkdir():
            # As vfs_mkdir: set-id bits are ignored; S_ISGID comes only by inheritance.
            return stat.S_IFDIR | (command.mode & 0o1777)
        case cmd.Symlink():
            return stat.S_IFLNK | 0o777
    return (stat.S_IFMT(command.mode) or stat.S_IFREG) | stat.S_IMODE(command.mode)


def inherited(parent_mode: int, parent_gid: int, mode: int, gid: int) -> tuple[int, int]:
    """Mode and group of a new inode: a set-group-id directory passes on its group, and to a
    new directory its S_ISGID bit too."""
    if parent_mode & stat.S_ISGID:
        return (mode | stat.S_ISGID if stat.S_ISDIR(mode) else mode), parent_gid
    return mode, gid


def created(parent: Attr, command: cmd.Mknod | cmd.Mkdir | cmd.Symlink, ino: int) -> Attr:
    """The attributes of a new regular file, directory or symlink named in `parent`."""
    mode, gid = inherited(parent.mode, parent.gid, created_mode(command), command.gid)
    is_dir = stat.S_ISDIR(mode)
    size = DIR_SIZE if is_dir else len(command.target) if isinstance(command, cmd.Symlink) else 0
    now = command.now_ns
    return Attr(
        ino, mode, 2 if is_dir else 1, command.uid, gid, 0, size, DIR_BLOCKS if is_dir else 0,
        now, now, now, 0, 0,
    )  # fmt: skip


def entry_changed(directory: Attr, now_ns: int, subdirs: int = 0) -> Attr:
    """A directory an entry was added to or removed from; `subdirs` is how many more
    directories it holds now (their `..` links count in its nlink)."""
    return dataclasses.replace(
        directory, nlink=directory.nlink + subdirs, mtime_ns=now_ns, ctime_ns=now_ns
    )


def link_dropped(node: Attr, now_ns: int) -> Attr:
    """A non-directory that lost one of its names."""
    return dataclasses.replace(node, nlink=node.nlink - 1, ctime_ns=now_ns)


def only_adds(shown: Attr, command: cmd.Setattr) -> bool:
    """Whether `command` gives nobody less access than `shown`: no new owner or group, and
    no permission bit taken away."""
    if command.uid not in (None, shown.uid) or command.gid not in (None, shown.gid):
        return False
    return command.mode is None or not stat.S_IMODE(shown.mode) & ~stat.S_IMODE(command.mode)


def attributes_set(node: Attr, command: cmd.Setattr) -> Attr:
    """An inode after a `Setattr` that changes no size."""
    mode = (
        node.mode if command.mode is None else stat.S_IFMT(node.mode) | stat.S_IMODE(command.mode)
    )
    return dataclasses.replace(
        node,
        mode=mode,
        uid=node.uid if command.uid is None else command.uid,
        gid=node.gid if command.gid is None else command.gid,
        atime_ns=node.atime_ns if command.atime_ns is None else command.atime_ns,
        mtime_ns=node.mtime_ns if command.mtime_ns is None else command.mtime_ns,
        ctime_ns=command.now_ns,
    )


def moved(node: Attr, now_ns: int) -> Attr:
    """The inode a rename moved."""
    return dataclasses.replace(node, ctime_ns=now_ns)
