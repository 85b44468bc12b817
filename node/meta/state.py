"""The metadata state machine: the namespace as a deterministic function of its command log.

`MetaState` keeps inodes, directory entries, xattrs, chunk maps, the garbage list and the
client sessions in one SQLite database. Applying the same commands in the same order gives the
same database everywhere, so replicas only need to agree on the log. To keep it that way,
nothing inside `apply_batch` reads the clock, draws random numbers or iterates an unordered
collection: timestamps and ids come in the commands, counters live in the database, and every
multi-row read that affects the state has an ORDER BY.

A batch is one SQLite transaction, or joins the one the batches before it left open (see
`apply_batch`), with one SAVEPOINT per command, so a failing command rolls back only itself.
Commands that carry (client id, seq) are applied at most once: a retry gets the stored outcome
back. That takes a session the client opened (`OpenSession`); once `Expire` ended it, its
commands are refused (SESSION_EXPIRED), since the outcomes that would have caught a late copy
are gone.

Directories are deleted as soon as they are removed (they hold no data an open handle could
still need); a regular file whose last link goes stays as an orphan with nlink 0 until a
`Purge` says no client has it open any more.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import stat
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

import msgpack

from ringfs.node.checksum import matches
from ringfs.node.errors import CHANGED, DELEGATED, SESSION_EXPIRED, NodeError
from ringfs.node.meta import commands as cmd
from ringfs.node.meta.commands import Attr, Chunk, Entry, Outcome
from ringfs.node.meta.effects import DIR_SIZE, attributes_set, created_mode, inherited
from ringfs.node.meta.queries import answer
from ringfs.node.meta.schema import (
    TABLES,
    Changes,
    Inode,
    Tables,
    check_name,
    check_xattr_name,
    open_database,
)

log = logging.getLogger(__name__)

#: ext4's EXT4_LINK_MAX: most hard links one file may have.
LINK_MAX = 65000
#: uid_t and gid_t are 32 bits.
_ID_MAX = 2**32 - 1
_MODE_MAX = 0o177777
#: The longest block a node stores: what one message carries (`Limits.max_bin_len`).
_BLOCK_MAX = 16 * 1024 * 1024
#: Kinds of inode Mknod may create (0 means a regular file, as for mknod(2)).
_MKNOD_KINDS = (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK)
#: Most inode numbers one Reserve sets aside.
RESERVE_MAX = 65536
# SQLite result codes that say the database or its disk failed, not the command's logic.
_STORAGE_FAILURES = frozenset(
    {
        sqlite3.SQLITE_PERM,
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_READONLY,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_CORRUPT,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
        sqlite3.SQLITE_NOTADB,
    }
)


def is_storage_failure(exc: BaseException) -> bool:
    """Whether `exc` is, or was caused by, the database or the machine failing (a full disk,
    an I/O error, no memory): something one replica meets and the others do not, so no
    answer may be derived from it."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemoryError):
            return True
        code = getattr(seen, "sqlite_errorcode", None) if isinstance(seen, sqlite3.Error) else None
        if code is not None and (code & 0xFF) in _STORAGE_FAILURES:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class Delegated(NodeError):
    """A command would change names in directories another client holds (`dirs`)."""

    def __init__(self, dirs: Sequence[int]) -> None:
        super().__init__(DELEGATED, f"directories {list(dirs)} are held by another client")
        self.dirs = list(dirs)


class MetaState:
    """The namespace database of one replica.

    Calls are serialised on an internal lock, so the object may be used from worker threads
    (``trio.to_thread``), one call at a time.
    """

    def __init__(
        self, path: Path | str, *, synchronous: bool = True, auto_checkpoint: bool = True
    ) -> None:
        """`synchronous=False`: commits are not fsync'd; `auto_checkpoint=False`: they never
        checkpoint the WAL (see `open_database`)."""
        self._lock = threading.Lock()
        self._db = open_database(path, synchronous=synchronous, auto_checkpoint=auto_checkpoint)
        self._closed = False
        self._rows = Tables(self._db)
        # What each entry of the last batch changed, in order (for the change feed).
        self._changes: list[tuple[bytes | None, list[int], list[tuple[int, bytes]]]] = []
        # The client whose entry is being applied (None for the system's own commands).
        self._issuer: bytes | None = None
        log.info("metadata database %s open at index %d", path, self.applied_index)

    def __enter__(self) -> MetaState:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Commit what batches left open, and close the database; the object is unusable
        afterwards. Batches that cannot be committed are lost here (and applied again from the
        log that holds them)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._db.in_transaction:
                    self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                log.warning("metadata database: applied batches not committed at close: %s", exc)
            finally:
                self._db.close()

    def commit(self) -> None:
        """Commit the batches `apply_batch(..., commit=False)` left in an open transaction
        (nothing once closed). A failure closes the database: the state it would answer from
        may have lost those batches, and the member must reopen it (its log applies them
        again)."""
        with self._lock:
            self._commit_open()

    def _commit_open(self) -> None:
        """`commit`, with the lock held."""
        if self._closed or not self._db.in_transaction:
            return
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:
            self._closed = True
            self._db.close()
            raise

    @property
    def applied_index(self) -> int:
        """The log index of the last batch applied with ``last_index`` (0 if none)."""
        with self._lock:
            return self._rows.counter("applied_index")

    def next_ino(self) -> int:
        """The number the next inode gets (each one made, or reserved, is below it)."""
        with self._lock:
            return self._rows.counter("next_ino")

    # --- applying ---------------------------------------------------------------------------

    def apply_batch(
        self, entries: Sequence[Entry], last_index: int | None = None, *, commit: bool = True
    ) -> list[Outcome]:
        """Apply ``entries`` in order in one transaction; return one Outcome per entry.

        `commit=False` leaves the transaction open, and the next batches join it, until a batch
        commits or `commit` is called: this connection reads what they applied at once, other
        connections once it is committed.

        A command failing with NodeError gives an Outcome with that errno name and leaves the
        state as if it never ran; its neighbours are unaffected. So does a bug in a command's
        handler (any other exception), answered EIO: deterministic, so every replica does the
        same, and in the same transaction, so a crash cannot leave half a batch applied. Only a
        failure of the database or the machine (`is_storage_failure`: a full disk, an I/O
        error, no memory), which replicas would not share, rolls back the whole batch and
        propagates; it rolls back the batches left open before it too.
        """
        with self._lock:
            if not self._db.in_transaction:
                self._db.execute("BEGIN IMMEDIATE")
            self._changes = []
            try:
                outcomes = [self._apply_entry(entry) for entry in entries]
                if last_index is not None:
                    self._rows.set_counter("applied_index", last_index)
                if commit:
                    self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
        return outcomes

    def take_changes(self) -> list[tuple[bytes | None, list[int], list[tuple[int, bytes]]]]:
        """For each entry of the last `apply_batch`: its client, and the inodes and entries
        (parent, name) it changed; a command that failed changed nothing."""
        changes, self._changes = self._changes, []
        return changes

    def _apply_entry(self, entry: Entry) -> Outcome:
        """Apply one entry inside its own SAVEPOINT. A bug anywhere in it (the command's
        handler, its result's encoding, the session bookkeeping) undoes the entry alone and
        answers EIO, the same on every replica; nothing is stored for its session, so a retry
        runs it again."""
        self._db.execute("SAVEPOINT entry")
        try:
            outcome = self._apply_in_session(entry)
        except Exception as exc:
            if is_storage_failure(exc) or not self._db.in_transaction:
                raise  # the database failed, or SQLite rolled the whole transaction back
            self._db.execute("ROLLBACK TO entry")
            log.exception("metadata command %s failed", entry.command.OP)
            outcome = Outcome(None, "EIO")
            self._rows.changes.clear()
        self._db.execute("RELEASE entry")
        self._changes.append((entry.client_id, *self._rows.changes.take()))
        return outcome

    def _apply_in_session(self, entry: Entry) -> Outcome:
        client, seq = entry.client_id, entry.seq
        self._issuer = client
        if client is None or seq is None:
            return self._apply_once(entry.command)
        acked_below = self._rows.one("SELECT acked_below FROM clients WHERE client_id = ?", client)
        if acked_below is None:
            # Expired, or never opened: an earlier copy may have run before the session's
            # outcomes were dropped, so this one must not.
            return Outcome(None, SESSION_EXPIRED)
        stored = self._stored_outcome(client, seq, acked_below)
        outcome = self._apply_once(entry.command) if stored is None else stored
        # A command held off by a delegation runs again once the leader recalled it.
        if stored is None and outcome.error != DELEGATED:
            blob = msgpack.packb(outcome.to_wire(), use_bin_type=True)
            self._rows.run("INSERT INTO sessions VALUES (?, ?, ?)", client, seq, blob)
        if entry.acked_below is not None and entry.acked_below > acked_below:
            sql = "DELETE FROM sessions WHERE client_id = ? AND seq < ?"
            self._rows.run(sql, client, entry.acked_below)
            sql = "UPDATE clients SET acked_below = ? WHERE client_id = ?"
            self._rows.run(sql, entry.acked_below, client)
        return outcome

    def _stored_outcome(self, client: bytes, seq: int, acked_below: int) -> Outcome | None:
        """The outcome of an earlier copy of this request, if there was one."""
        blob = self._rows.one(
            "SELECT outcome FROM sessions WHERE client_id = ? AND seq = ?", client, seq
        )
        if blob is not None:
            return Outcome.from_wire(msgpack.unpackb(blob, raw=False))
        if seq < acked_below:
            # The client has its answer and let us forget it: this is a late duplicate that
            # must not run twice. Nobody waits for this reply.
            return Outcome(None, "ESTALE")
        return None

    def _apply_once(self, command: cmd.Command) -> Outcome:
        """Run the command's handler; a NodeError undoes it and becomes its outcome (one
        that a delegation held off names the directories the leader must recall)."""
        self._db.execute("SAVEPOINT command")
        # This command's changes are noted apart, and kept only if it succeeds (a batch's
        # earlier commands keep theirs).
        outer, self._rows.changes = self._rows.changes, Changes()
        try:
            # Each command class has its handler `_apply_<OP>`.
            result = getattr(self, f"_apply_{command.OP}")(command)
            outcome = Outcome(cmd.encode_result(result), None)
            outer.update(self._rows.changes)
        except NodeError as exc:
            self._db.execute("ROLLBACK TO command")
            log.debug("%s failed: %s", command.OP, exc)
            outcome = Outcome(exc.dirs if isinstance(exc, Delegated) else None, exc.name)
        finally:
            self._rows.changes = outer
        self._db.execute("RELEASE command")
        return outcome

    # --- creating -----------------------------------------------------------------------------

    def _apply_init(self, c: cmd.Init) -> None:
        if self._rows.counter("chunk_size"):
            return
        if c.chunk_size <= 0:
            raise NodeError("EINVAL", "chunk size must be positive")
        _check_ids(c.uid, c.gid)
        now, mode = c.now_ns, stat.S_IFDIR | 0o755
        root = Inode(cmd.ROOT_INO, mode, 2, c.uid, c.gid, 0, DIR_SIZE, now, now, now, 0, None)
        self._rows.insert(root)
        self._rows.set_counter("chunk_size", c.chunk_size)

    def _apply_mknod(self, c: cmd.Mknod) -> Attr:
        _check_mode(c.mode)
        kind = stat.S_IFMT(c.mode) or stat.S_IFREG
        if kind == stat.S_IFDIR:
            raise NodeError("EPERM", "mknod cannot make directories")
        if kind not in _MKNOD_KINDS:
            raise NodeError("EINVAL", f"mknod cannot make file type {kind:o}")
        rdev = c.rdev if kind in (stat.S_IFCHR, stat.S_IFBLK) else 0
        return self._create(c, rdev=rdev)

    def _apply_mkdir(self, c: cmd.Mkdir) -> Attr:
        _check_mode(c.mode)
        return self._create(c)

    def _apply_symlink(self, c: cmd.Symlink) -> Attr:
        if not c.target:
            raise NodeError("ENOENT", "empty symlink target")
        if len(c.target) > cmd.SYMLINK_MAX:
            raise NodeError("ENAMETOOLONG", "symlink target too long")
        if b"\0" in c.target:
            raise NodeError("EINVAL", "NUL in symlink target")
        return self._create(c, target=c.target)

    def _create(
        self, c: cmd.Mknod | cmd.Mkdir | cmd.Symlink, rdev: int = 0, target: bytes | None = None
    ) -> Attr:
        """Make a new inode named ``c.name`` in ``c.parent``; the caller checked the mode."""
        check_name(c.name)
        _check_ids(c.uid, c.gid)
        self._may_change(c.parent)
        directory = self._rows.new_entry_dir(c.parent, c.name)
        mode, gid = inherited(directory.mode, directory.gid, created_mode(c), c.gid)
        is_dir = stat.S_ISDIR(mode)
        size = DIR_SIZE if is_dir else len(target or b"")
        ino, now, nlink = self._new_ino(c.ino), c.now_ns, 2 if is_dir else 1
        node = Inode(ino, mode, nlink, c.uid, gid, rdev, size, now, now, now, 0, target)
        self._rows.insert(node)
        self._rows.add_entry(c.parent, c.name, ino)
        directory.nlink += is_dir
        directory.touch(now)
        self._rows.save(directory)
        return node.attr()

    def _new_ino(self, chosen: int) -> int:
        """The number of a new inode: `chosen` by the issuer from the range it reserved, or
        the next free one (0)."""
        if not chosen:
            return self._rows.next("next_ino")
        sql = "SELECT 1 FROM inode_ranges WHERE client_id = ? AND first <= ? AND ? < stop"
        reserved = self._rows.one(sql, self._issuer, chosen, chosen) is not None
        if not reserved or self._rows.one("SELECT 1 FROM inodes WHERE ino = ?", chosen):
            raise NodeError("EINVAL", f"inode {chosen} is not reserved for this client")
        return chosen

    def _may_change(self, *dirs: int) -> None:
        """Delegated unless the issuer may change names in these directories now: none of
        them is held by another client."""
        held = [d for d in dict.fromkeys(dirs) if self._holder(d) not in (None, self._issuer)]
        if held:
            raise Delegated(held)

    def _holder(self, directory: int) -> bytes | None:
        holder = self._rows.one("SELECT client_id FROM delegations WHERE dir = ?", directory)
        return None if holder is None else bytes(holder)

    def _apply_link(self, c: cmd.Link) -> Attr:
        node = self._rows.get(c.ino)
        check_name(c.new_name)
        self._may_change(c.new_parent)
        directory = self._rows.new_entry_dir(c.new_parent, c.new_name)
        if node.is_dir:
            raise NodeError("EPERM", "cannot hard-link a directory")
        if node.nlink == 0:
            raise NodeError("ENOENT", "cannot link an unlinked inode")
        if node.nlink >= LINK_MAX:
            raise NodeError("EMLINK", "too many links")
        self._rows.add_entry(c.new_parent, c.new_name, node.ino)
        node.nlink += 1
        node.ctime_ns = c.now_ns
        directory.touch(c.now_ns)
        self._rows.save(node, directory)
        return node.attr()

    # --- removing -----------------------------------------------------------------------------

    def _apply_unlink(self, c: cmd.Unlink) -> Attr:
        self._may_change(c.parent)
        directory, node = self._rows.existing_entry(c.parent, c.name)
        if node.is_dir:
            raise NodeError("EISDIR", "unlink of a directory")
        self._rows.remove_entry(c.parent, c.name)
        node.nlink -= 1
        node.ctime_ns = c.now_ns
        directory.touch(c.now_ns)
        self._rows.save(node, directory)
        self._note_orphan(node)
        return node.attr()

    def _note_orphan(self, node: Inode) -> None:
        """An inode that lost its last name lives on while its client has it open: note
        whose it is, so that it can be purged if that client goes away without doing it."""
        if node.nlink == 0 and self._issuer is not None:
            self._rows.run("INSERT OR REPLACE INTO orphans VALUES (?, ?)", node.ino, self._issuer)

    def _apply_rmdir(self, c: cmd.Rmdir) -> None:
        self._may_change(c.parent)
        directory, node = self._rows.existing_entry(c.parent, c.name)
        if not node.is_dir:
            raise NodeError("ENOTDIR", "rmdir of a non-directory")
        self._may_change(node.ino)
        if self._rows.has_entries(node.ino):
            raise NodeError("ENOTEMPTY", "directory not empty")
        self._rows.remove_entry(c.parent, c.name)
        self._destroy(node.ino)
        directory.nlink -= 1
        directory.touch(c.now_ns)
        self._rows.save(directory)

    def _apply_purge(self, c: cmd.Purge) -> None:
        for ino in c.inos:
            if self._rows.one("SELECT nlink FROM inodes WHERE ino = ?", ino) == 0:
                self._destroy(ino)

    def _destroy(self, ino: int) -> None:
        """Delete an inode that no entry names, with its xattrs and its delegation; its blocks
        become garbage."""
        self._drop_chunks(ino, 0)
        self._rows.run("DELETE FROM delegations WHERE dir = ?", ino)
        self._rows.run("DELETE FROM orphans WHERE ino = ?", ino)
        self._rows.delete(ino)

    # --- rename -------------------------------------------------------------------------------

    def _apply_rename(self, c: cmd.Rename) -> Attr | None:
        """rename(2) and renameat2(2), with Linux's checks in Linux's order."""
        if c.flags not in (0, cmd.RENAME_NOREPLACE, cmd.RENAME_EXCHANGE):
            raise NodeError("EINVAL", f"bad rename flags {c.flags}")
        exchange = c.flags == cmd.RENAME_EXCHANGE
        check_name(c.name)
        check_name(c.new_name)
        old_dir = self._rows.dir(c.parent)
        new_dir = old_dir if c.new_parent == c.parent else self._rows.dir(c.new_parent)
        self._may_change(c.parent, c.new_parent)
        src_ino = self._rows.entry(c.parent, c.name)
        if src_ino is None:
            raise NodeError("ENOENT", "rename source does not exist")
        dst_ino = self._rows.entry(c.new_parent, c.new_name)
        if dst_ino is not None and c.flags == cmd.RENAME_NOREPLACE:
            raise NodeError("EEXIST", "rename target exists")
        if dst_ino is None and exchange:
            raise NodeError("ENOENT", "exchange target does not exist")
        src = self._rows.get(src_ino)
        if src.is_dir and self._is_ancestor(src_ino, c.new_parent):
            raise NodeError("EINVAL", "cannot move a directory under itself")
        if dst_ino is not None and self._is_ancestor(dst_ino, c.parent):
            raise NodeError("EINVAL" if exchange else "ENOTEMPTY", "target contains the source")
        if src_ino == dst_ino:
            return None
        dst = None if dst_ino is None else self._rows.get(dst_ino)
        if dst is not None and dst.is_dir and not exchange:
            self._may_change(dst.ino)  # it must be empty to go
        if exchange and dst is not None:
            self._exchange(c, src, dst, old_dir, new_dir)
        else:
            self._move(c, src, dst, old_dir, new_dir)
        src.ctime_ns = c.now_ns
        old_dir.touch(c.now_ns)
        new_dir.touch(c.now_ns)
        self._rows.save(src, *((old_dir,) if old_dir is new_dir else (old_dir, new_dir)))
        return None if dst is None else dst.attr()

    def _move(
        self, c: cmd.Rename, src: Inode, dst: Inode | None, old_dir: Inode, new_dir: Inode
    ) -> None:
        """Plain rename: drop whatever the target names, then move the source entry there."""
        if dst is not None:
            if src.is_dir and not dst.is_dir:
                raise NodeError("ENOTDIR", "cannot replace a non-directory with a directory")
            if dst.is_dir and not src.is_dir:
                raise NodeError("EISDIR", "cannot replace a directory with a non-directory")
            if dst.is_dir and self._rows.has_entries(dst.ino):
                raise NodeError("ENOTEMPTY", "rename target directory not empty")
            self._rows.remove_entry(c.new_parent, c.new_name)
            dst.ctime_ns = c.now_ns
            if dst.is_dir:
                dst.nlink = 0
                self._destroy(dst.ino)
                new_dir.nlink -= 1
            else:
                dst.nlink -= 1
                self._rows.save(dst)
                self._note_orphan(dst)
        self._rows.remove_entry(c.parent, c.name)
        self._rows.add_entry(c.new_parent, c.new_name, src.ino)
        if src.is_dir and old_dir is not new_dir:
            old_dir.nlink -= 1
            new_dir.nlink += 1

    def _exchange(
        self, c: cmd.Rename, src: Inode, dst: Inode, old_dir: Inode, new_dir: Inode
    ) -> None:
        """RENAME_EXCHANGE: both entries stay, naming each other's inode (with new cookies)."""
        for parent, name, ino in ((c.parent, c.name, dst.ino), (c.new_parent, c.new_name, src.ino)):
            self._rows.remove_entry(parent, name)
            self._rows.add_entry(parent, name, ino)
        if old_dir is not new_dir and src.is_dir != dst.is_dir:
            moved = 1 if src.is_dir else -1
            old_dir.nlink -= moved
            new_dir.nlink += moved
        dst.ctime_ns = c.now_ns
        self._rows.save(dst)

    def _is_ancestor(self, ancestor: int, ino: int) -> bool:
        """Whether ``ancestor`` is directory ``ino`` or one of the directories above it."""
        while ino != ancestor:
            # A directory has exactly one entry, so its parent is well defined.
            parent = self._rows.one("SELECT parent FROM dentries WHERE ino = ?", ino)
            if parent is None:  # the root
                return False
            ino = parent
        return True

    # --- attributes and data ------------------------------------------------------------------

    def _apply_setattr(self, c: cmd.Setattr) -> Attr:
        node = self._rows.get(c.ino)
        _check_ids(c.uid or 0, c.gid or 0)
        _check_mode(c.mode or 0)
        if c.size is not None:
            self._resize(node, c.size, c.now_ns)
        after = attributes_set(node.attr(), c)
        node.mode, node.uid, node.gid = after.mode, after.uid, after.gid
        node.atime_ns, node.mtime_ns, node.ctime_ns = after.atime_ns, after.mtime_ns, after.ctime_ns
        self._rows.save(node)
        return self._rows.get(node.ino).attr()

    def _resize(self, node: Inode, size: int, now_ns: int) -> None:
        """Truncate or extend a regular file: chunks past the end go, the last one shortens."""
        _check_regular(node, size)
        chunk_size = self._rows.counter("chunk_size")
        self._drop_chunks(node.ino, -(-size // chunk_size))
        last = size // chunk_size
        chunk = self._chunk(node.ino, last) if size % chunk_size else None
        if chunk is not None:
            self._put_chunk(node.ino, chunk.cut(size - last * chunk_size))
        if size != node.size:
            node.version += 1
            node.size = size
        node.mtime_ns = now_ns

    def _apply_commit_chunks(self, c: cmd.CommitChunks) -> Attr:
        node = self._rows.get(c.ino)
        _check_regular(node, c.size)
        _check_mode(c.mode or 0)
        chunk_size = self._rows.counter("chunk_size")
        _check_chunks([u.chunk for u in c.updates], chunk_size)
        if c.expect_size is not None and node.size != c.expect_size:
            raise NodeError(CHANGED, f"size is {node.size}, not {c.expect_size}")
        bases = [self._check_base(c.ino, update) for update in c.updates]
        size = max(node.size, c.size)
        for update, base in zip(c.updates, bases, strict=True):
            chunk = update.chunk
            # Bytes past the end of the file must read as zeros if it grows again: cut them off.
            length = min(chunk.length, size - chunk.idx * chunk_size)
            if length <= 0:
                self._release_blocks([(chunk.block_id, chunk.length)])
                continue
            self._put_chunk(c.ino, chunk.cut(length))
            if chunk.inline:
                sql = "INSERT OR IGNORE INTO inline_blocks VALUES (?, ?)"
                self._rows.run(sql, chunk.block_id, chunk.data)
            if base is not None and base.block_id != chunk.block_id:
                self._release_blocks([(base.block_id, base.stored_length)])
        node.size = size
        node.ctime_ns = c.now_ns
        node.mtime_ns = c.now_ns if c.mtime_ns is None else c.mtime_ns
        if c.atime_ns is not None:
            node.atime_ns = c.atime_ns
        if c.mode is not None:
            node.mode = stat.S_IFMT(node.mode) | stat.S_IMODE(c.mode)
        node.version += 1
        self._rows.save(node)
        return self._rows.get(node.ino).attr()

    def _check_base(self, ino: int, update: cmd.ChunkUpdate) -> Chunk | None:
        """The chunk the writer built on, or CHANGED unless the chunk still is that one. A
        block already listed as garbage may be deleted at any moment, and an abandoned one may
        be gone: neither is referenced again (ESTALE). A tail extends the block of the chunk it
        replaces, which must be a stored one (EINVAL)."""
        chunk = update.chunk
        current = self._chunk(ino, chunk.idx)
        found = (b"", 0) if current is None else (current.identity, current.length)
        if found != (update.base_block, update.base_length):
            raise NodeError(CHANGED, f"chunk {chunk.idx} changed")
        if chunk.tail and not self._extends(chunk, current):
            raise NodeError("EINVAL", f"chunk {chunk.idx}: a tail must follow the stored bytes")
        block_id = chunk.block_id
        released = (
            "SELECT 1 FROM garbage WHERE block_id = ? "
            "UNION ALL SELECT 1 FROM abandoned WHERE block_id = ?"
        )
        if self._rows.one(released, block_id, block_id) is not None:
            raise NodeError("ESTALE", f"block {block_id.hex()} was released")
        return current

    def _extends(self, chunk: Chunk, base: Chunk | None) -> bool:
        """Whether `chunk` keeps `base`'s stored block and bytes, and adds its tail after them."""
        if base is None or (base.block_id, base.checksum) != (chunk.block_id, chunk.checksum):
            return False
        inline = self._rows.one("SELECT 1 FROM inline_blocks WHERE block_id = ?", base.block_id)
        return inline is None and base.stored_length == chunk.stored_length

    def _chunk(self, ino: int, idx: int) -> Chunk | None:
        """A chunk map row with its tail (an inline block's data stays in its own table)."""
        sql = (
            "SELECT c.idx, c.block_id, c.length, c.checksum, x'', COALESCE(t.data, x'') "
            "FROM chunks c LEFT JOIN chunk_tails t ON t.ino = c.ino AND t.idx = c.idx "
            "WHERE c.ino = ? AND c.idx = ?"
        )
        row = self._rows.run(sql, ino, idx).fetchone()
        return None if row is None else Chunk(*row)

    def _put_chunk(self, ino: int, chunk: Chunk) -> None:
        self._rows.run(
            "INSERT OR REPLACE INTO chunks VALUES (?, ?, ?, ?, ?)",
            ino, chunk.idx, chunk.block_id, chunk.length, chunk.checksum,
        )  # fmt: skip
        if chunk.tail:
            sql = "INSERT OR REPLACE INTO chunk_tails VALUES (?, ?, ?)"
            self._rows.run(sql, ino, chunk.idx, chunk.tail)
        else:
            self._rows.run("DELETE FROM chunk_tails WHERE ino = ? AND idx = ?", ino, chunk.idx)

    def _drop_chunks(self, ino: int, first_idx: int) -> None:
        """Remove chunks from ``first_idx`` on; their blocks (the bytes they store, not the
        tails the metadata keeps) may become garbage."""
        sql = (
            "SELECT c.block_id, c.length - length(COALESCE(t.data, x'')) FROM chunks c "
            "LEFT JOIN chunk_tails t ON t.ino = c.ino AND t.idx = c.idx "
            "WHERE c.ino = ? AND c.idx >= ? ORDER BY c.idx"
        )
        blocks = [(row[0], row[1]) for row in self._rows.run(sql, ino, first_idx)]
        self._rows.run("DELETE FROM chunks WHERE ino = ? AND idx >= ?", ino, first_idx)
        self._rows.run("DELETE FROM chunk_tails WHERE ino = ? AND idx >= ?", ino, first_idx)
        self._release_blocks(blocks)

    def _release_blocks(self, blocks: list[tuple[bytes, int]]) -> None:
        """Blocks (id, length) dropped from a chunk map become garbage unless another chunk
        still uses them; one the metadata keeps goes at once (whoever read it holds its
        bytes)."""
        for block_id, length in blocks:
            if self._rows.one("SELECT 1 FROM chunks WHERE block_id = ? LIMIT 1", block_id) is None:
                kept = self._rows.run("DELETE FROM inline_blocks WHERE block_id = ?", block_id)
                if not kept.rowcount:
                    self._to_garbage(block_id, length)

    def _to_garbage(self, block_id: bytes, length: int) -> None:
        """List a block as garbage, counting it (`FsInfo` tells the backlog without a walk)."""
        sql = "INSERT OR IGNORE INTO garbage (block_id, length) VALUES (?, ?)"
        if self._rows.run(sql, block_id, length).rowcount:
            self._count_garbage(1, length)

    def _count_garbage(self, blocks: int, length: int) -> None:
        self._rows.set_counter("garbage_blocks", self._rows.counter("garbage_blocks") + blocks)
        self._rows.set_counter("garbage_bytes", self._rows.counter("garbage_bytes") + length)

    # --- what clients decide themselves -------------------------------------------------------

    def _apply_reserve(self, c: cmd.Reserve) -> int:
        if self._issuer is None or not 0 < c.count <= RESERVE_MAX:
            raise NodeError("EINVAL", f"a client reserves 1 to {RESERVE_MAX} inode numbers")
        first = self._rows.counter("next_ino")
        self._rows.set_counter("next_ino", first + c.count)
        sql = "INSERT OR REPLACE INTO inode_ranges VALUES (?, ?, ?)"
        self._rows.run(sql, self._issuer, first, first + c.count)
        return first

    def _apply_delegate(self, c: cmd.Delegate) -> None:
        if self._issuer is None:
            raise NodeError("EINVAL", "only a client holds directories")
        self._rows.dir(c.ino)
        self._may_change(c.ino)
        self._rows.run("INSERT OR IGNORE INTO delegations VALUES (?, ?)", c.ino, self._issuer)

    def _apply_release(self, c: cmd.Release) -> None:
        if self._issuer not in (None, c.holder):
            raise NodeError("EPERM", "a client releases only what it holds")
        if not c.dirs:
            self._rows.run("DELETE FROM delegations WHERE client_id = ?", c.holder)
        for directory in c.dirs:
            sql = "DELETE FROM delegations WHERE dir = ? AND client_id = ?"
            self._rows.run(sql, directory, c.holder)

    def _apply_open_session(self, c: cmd.OpenSession) -> None:
        if self._issuer is None:
            raise NodeError("EINVAL", "a session is a client's")
        self._rows.run("INSERT OR IGNORE INTO clients VALUES (?, 0)", self._issuer)

    def _apply_expire(self, c: cmd.Expire) -> None:
        for client in c.client_ids:
            sql = "SELECT ino FROM orphans WHERE client_id = ? ORDER BY ino"
            for (ino,) in self._rows.run(sql, client).fetchall():
                self._destroy(ino)
            for table in ("delegations", "inode_ranges", "sessions", "clients"):
                self._rows.run(f"DELETE FROM {table} WHERE client_id = ?", client)

    def _apply_batch(self, c: cmd.Batch) -> list[Outcome]:
        if any(isinstance(command, cmd.Batch) for command in c.commands):
            raise NodeError("EINVAL", "a batch holds no batch")
        lost = [d for d in c.held if self._holder(d) != self._issuer]
        if self._issuer is None or lost:
            raise NodeError("ESTALE", f"directories {lost} are no longer held by this client")
        return [self._apply_once(command) for command in c.commands]

    def holders(self, dirs: Iterable[int]) -> dict[int, bytes]:
        """Which client holds each of `dirs` that is held."""
        with self._lock:
            found = {d: self._holder(d) for d in dirs}
            return {d: holder for d, holder in found.items() if holder is not None}

    def _apply_abandon(self, c: cmd.Abandon) -> list[bytes]:
        if len(c.lengths) != len(c.block_ids) or not all(0 <= n <= _BLOCK_MAX for n in c.lengths):
            raise NodeError("EINVAL", "one length, at most 16 MiB, per abandoned block")
        referenced = []
        for block_id, length in zip(c.block_ids, c.lengths, strict=True):
            if self._rows.one("SELECT 1 FROM chunks WHERE block_id = ? LIMIT 1", block_id):
                referenced.append(block_id)
                continue
            self._rows.run("INSERT OR IGNORE INTO abandoned VALUES (?)", block_id)
            self._to_garbage(block_id, length)
        return referenced

    def _apply_forget_garbage(self, c: cmd.ForgetGarbage) -> None:
        for block_id in c.block_ids:
            sql = "DELETE FROM garbage WHERE block_id = ? RETURNING length"
            row = self._rows.run(sql, block_id).fetchone()
            if row is not None:
                self._count_garbage(-1, -row[0])

    def _apply_setxattr(self, c: cmd.SetXattr) -> None:
        check_xattr_name(c.name)
        if len(c.value) > cmd.XATTR_SIZE_MAX:
            raise NodeError("E2BIG", "xattr value too large")
        if c.flags & ~(cmd.XATTR_CREATE | cmd.XATTR_REPLACE):
            raise NodeError("EINVAL", f"bad xattr flags {c.flags}")
        node = self._rows.get(c.ino)
        present = self._rows.xattr(c.ino, c.name) is not None
        if present and c.flags & cmd.XATTR_CREATE:
            raise NodeError("EEXIST", "xattr exists")
        if not present and c.flags & cmd.XATTR_REPLACE:
            raise NodeError("ENODATA", "no such xattr")
        self._rows.run("INSERT OR REPLACE INTO xattrs VALUES (?, ?, ?)", c.ino, c.name, c.value)
        node.ctime_ns = c.now_ns
        self._rows.save(node)

    def _apply_removexattr(self, c: cmd.RemoveXattr) -> None:
        check_xattr_name(c.name)
        node = self._rows.get(c.ino)
        if not self._rows.run(
            "DELETE FROM xattrs WHERE ino = ? AND name = ?", c.ino, c.name
        ).rowcount:
            raise NodeError("ENODATA", "no such xattr")
        node.ctime_ns = c.now_ns
        self._rows.save(node)

    # --- queries ------------------------------------------------------------------------------

    def query(self, q: cmd.Query) -> Any:
        """Answer a read-only query; `ringfs.node.meta.commands` gives each one's result type.

        Raises NodeError with the errno name a local filesystem would give.
        """
        with self._lock:
            return answer(self._rows, q)

    def attrs(self, inos: Iterable[int]) -> list[Attr]:
        """The attributes of those of `inos` that exist."""
        with self._lock:
            found = []
            for ino in inos:
                with contextlib.suppress(NodeError):
                    found.append(self._rows.get(ino).attr())
            return found

    # --- snapshots and inspection -------------------------------------------------------------

    def snapshot_to(self, path: Path | str) -> None:
        """Write a consistent copy of the whole database to ``path`` (a new file), with every
        batch applied so far."""
        with self._lock:
            self._commit_open()
            target = sqlite3.connect(str(path))
            try:
                self._db.backup(target)
            finally:
                target.close()

    def dump(self) -> list[Any]:
        """Every row of every table, sorted: equal dumps mean equal replicas."""
        with self._lock:
            return [[table, sorted(self._rows.run(f"SELECT * FROM {table}"))] for table in TABLES]


def _check_ids(uid: int, gid: int) -> None:
    if not (0 <= uid <= _ID_MAX and 0 <= gid <= _ID_MAX):
        raise NodeError("EINVAL", "uid or gid out of range")


def _check_mode(mode: int) -> None:
    """A mode is a file type and permission bits: 16 bits."""
    if not 0 <= mode <= _MODE_MAX:
        raise NodeError("EINVAL", "mode out of range")


def _check_regular(node: Inode, size: int) -> None:
    """Only regular files have data (and a size that can be set)."""
    if node.is_dir:
        raise NodeError("EISDIR", "a directory has no data")
    if not stat.S_ISREG(node.mode):
        raise NodeError("EINVAL", "not a regular file")
    if size < 0:
        raise NodeError("EINVAL", "negative size")


def _check_chunks(chunks: Sequence[Chunk], chunk_size: int) -> None:
    """Chunks must fit their slot and name each index once; a block the metadata is to keep
    must be whole and match its checksum, as the storage nodes check theirs."""
    seen: set[int] = set()
    for chunk in chunks:
        if chunk.length > chunk_size:
            raise NodeError("EINVAL", f"chunk {chunk.idx} is longer than a chunk")
        if chunk.inline and (
            len(chunk.data) != chunk.length or not matches(chunk.data, chunk.checksum)
        ):
            raise NodeError("EINVAL", f"chunk {chunk.idx}: its data is not the block it names")
        if chunk.idx in seen:
            raise NodeError("EINVAL", f"chunk {chunk.idx} given twice")
        seen.add(chunk.idx)
