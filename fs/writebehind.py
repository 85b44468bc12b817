"""Namespace changes this mount acknowledges before the leader applies them.

A directory this mount made is held by it (`ringfs.node.meta.delegations`): no other client
changes the names in it until the leader recalls it. So the outcome of a create, a mkdir, an
unlink, a rename of a non-directory or an rmdir of an empty held directory there follows from
what the cache knows (all of its names, and their attributes), and so does that of a change of
times or an added permission of what this mount made. `WriteBehind.acknowledge` answers them
at once: it takes an inode number from a range the leader reserved for this mount, works out
the attributes the state machine will give (`ringfs.node.meta.effects`), shows them in the
cache, and queues the command. Queued commands go to the leader together in one `Batch`,
`FLUSH_DELAY` after the first, or at once when someone waits: a close or fsync (its chunk
commit rides in the same batch, so a small file costs one replicated round), a query, any
command that cannot be foreseen. At most one batch is on its way at a time, so the leader
applies them in the order they were made; a caller that waits sends the batch itself when none
is on its way.

What this gives up: a change acknowledged here is durable only once its batch is committed (a
few milliseconds later, or when a close, fsync or fsyncdir waits for it). A mount that dies
first loses it, as a local filesystem loses the names it had not synced. Other mounts see it
when it is committed, as any other change.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import stat
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.metacache import MetaCache, touched
from ringfs.node.errors import NodeError, ProtocolError, Unavailable
from ringfs.node.meta import effects
from ringfs.node.meta.commands import (
    RENAME_NOREPLACE,
    Attr,
    Batch,
    Command,
    CommitChunks,
    Delegate,
    Mkdir,
    Mknod,
    Outcome,
    Purge,
    Release,
    RemoveXattr,
    Rename,
    Reserve,
    Rmdir,
    Setattr,
    SetXattr,
    Symlink,
    Unlink,
    decode_result,
)
from ringfs.node.meta.schema import check_name

log = logging.getLogger(__name__)

#: Seconds queued changes wait for others to share their batch, unless someone waits on them.
FLUSH_DELAY = 0.005
#: Most commands, and about the most bytes, one batch carries: far below a frame's limits.
BATCH_COMMANDS = 4096
BATCH_BYTES = 4 * 1024 * 1024
#: Inode numbers reserved at a time for the files and directories this mount names itself.
RESERVE_COUNT = 4096
#: Commands that change one inode's attributes or data, never a name: they cannot meet a held
#: directory, so they may ride in a batch behind the changes queued before them.
RIDERS = (Setattr, CommitChunks, SetXattr, RemoveXattr, Purge, Reserve)


@dataclass
class _Queued:
    """A command waiting for its batch: acknowledged already, or with a caller waiting."""

    command: Command
    #: Held directories whose names it changes.
    relies_on: tuple[int, ...] = ()
    #: Inodes whose attributes the cache shows as it will be after this command.
    shows: tuple[int, ...] = ()
    waiter: trio.Event | None = None
    outcome: Outcome | None = None
    error: BaseException | None = None


class WriteBehind:
    """The queue of this mount's namespace changes, and the directories it holds."""

    def __init__(
        self,
        cluster: Cluster,
        cache: MetaCache,
        enabled: bool = True,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        """`enabled=False`: nothing is answered before the leader applied it, and this mount
        holds no directory."""
        self.cluster = cluster
        self.cache = cache
        self.enabled = enabled
        self._clock = clock
        #: Directories this mount holds.
        self.held: set[int] = set()
        self._releasing: set[int] = set()
        self._queue: list[_Queued] = []
        # Held while a batch is on its way: by `run`, or by a rider that sends its batch itself.
        self._sending = trio.Lock()
        # Set when someone waits for the queued changes; else they are due `FLUSH_DELAY` after
        # the first: `run` waits in `_waiting`, whose deadline follows `_due` without waking it.
        self._hurry = trio.Event()
        self._due = math.inf
        self._waiting = trio.CancelScope()
        self._idle = trio.Event()
        self._idle.set()
        # The inode numbers reserved for this mount and not used yet, and all it reserved so
        # far; one reservation at a time (each replaces the range before it at the leader).
        self._free = range(0)
        self._reserved: list[range] = []
        self._reserving = trio.Lock()
        # How many queued or travelling commands each inode's cached attributes foresee, and
        # how many riders change each inode (its cached attributes are older than they will
        # be: nothing is foreseen from them meanwhile).
        self._foreseen: dict[int, int] = {}
        self._riding: dict[int, int] = {}
        # Batches of acknowledged changes lost, and how many of those a drain reported.
        self._lost = 0
        self._reported = 0

    @property
    def busy(self) -> bool:
        """Whether changes are queued or on their way."""
        return bool(self._queue) or self._sending.locked()

    # -- acknowledging -------------------------------------------------------------------------

    async def acknowledge(self, command: Command) -> tuple[bool, object]:
        """(True, result) if `command` was answered here and queued; (False, None) if its
        outcome is not known here and it must go to the leader."""
        if not self.enabled:
            return False, None
        if isinstance(command, (Mknod, Mkdir, Symlink)) and not self._free:
            if not self._may_create(command):
                return False, None
            await self._reserve()
        if not self.cache.fresh():
            return False, None
        now = self._clock()
        match command:
            case Mknod() | Mkdir() | Symlink() if self._may_create(command) and self._free:
                return True, self._create(dataclasses.replace(command, now_ns=now))
            case Unlink():
                return self._unlink(dataclasses.replace(command, now_ns=now))
            case Rmdir():
                return self._rmdir(dataclasses.replace(command, now_ns=now))
            case Rename():
                return self._rename(dataclasses.replace(command, now_ns=now))
            case Setattr() if command.size is None:
                return self._setattr(dataclasses.replace(command, now_ns=now))
        return False, None

    def _may_create(self, command: Mknod | Mkdir | Symlink) -> bool:
        if isinstance(command, Mknod) and stat.S_IFMT(command.mode) != stat.S_IFREG:
            return False  # devices, fifos and sockets are rare: the leader checks them
        return (
            self._knows_names(command.parent)
            and self.cache.known_missing(command.parent, command.name)
            and _valid_name(command.name)
        )

    def _knows_names(self, directory: int) -> bool:
        """Whether this mount may foresee changes of names in `directory`."""
        return (
            directory in self.held
            and directory not in self._riding
            and bool(self.cache.complete_among([directory]))
            and self.cache.attr(directory) is not None
        )

    def _create(self, command: Mknod | Mkdir | Symlink) -> Attr:
        ino = self._take_free()  # the caller made sure one is left
        command = dataclasses.replace(command, ino=ino)
        parent = self.cache.attr(command.parent)
        assert parent is not None
        made = effects.created(parent, command, ino)
        is_dir = isinstance(command, Mkdir)
        directory = effects.entry_changed(parent, command.now_ns, 1 if is_dir else 0)
        self._show([], [made, directory], [(command.parent, command.name, ino)])
        self._queue_change(command, (command.parent,), (ino, command.parent))
        if is_dir:
            self.cache.mark_complete([ino])
            self.held.add(ino)
            self._queue_change(Delegate(ino), (command.parent,), ())
        return made

    def _unlink(self, command: Unlink) -> tuple[bool, object]:
        child = self._child(command.parent, command.name)
        parent = self.cache.attr(command.parent)
        if child is None or parent is None or stat.S_ISDIR(child.mode):
            return False, None
        left = effects.link_dropped(child, command.now_ns)
        self._show(
            [(command.parent, command.name)],
            [left, effects.entry_changed(parent, command.now_ns)],
            [],
        )
        self._queue_change(command, (command.parent,), (child.ino, command.parent))
        return True, left

    def _setattr(self, command: Setattr) -> tuple[bool, object]:
        """Times, and a mode that only adds permissions, of an inode no other client can
        remove meanwhile: a directory this mount holds, or a file it made that has one name
        (in a held directory, unless this mount moved it out; even then, another client that
        removes it first only makes this change moot)."""
        node = self.cache.attr(command.ino)
        if node is None or node.ino in self._riding or not effects.only_adds(node, command):
            return False, None
        made_here = any(node.ino in numbers for numbers in self._reserved)
        if node.ino not in self.held and not (
            made_here and node.nlink == 1 and not stat.S_ISDIR(node.mode)
        ):
            return False, None
        after = effects.attributes_set(node, command)
        self._show([], [after], [])
        self._queue_change(command, (), (node.ino,))
        return True, after

    def _rmdir(self, command: Rmdir) -> tuple[bool, object]:
        """An empty directory this mount holds, in one it holds."""
        child = self._child(command.parent, command.name)
        parent = self.cache.attr(command.parent)
        if child is None or parent is None or not stat.S_ISDIR(child.mode):
            return False, None
        if not self._knows_names(child.ino) or not self.cache.known_empty(child.ino):
            return False, None
        self._show(
            [(command.parent, command.name)],
            [effects.entry_changed(parent, command.now_ns, -1)],
            [],
        )
        self.held.discard(child.ino)
        self._queue_change(command, (command.parent, child.ino), (command.parent,))
        return True, None

    def _rename(self, command: Rename) -> tuple[bool, object]:
        if command.flags not in (0, RENAME_NOREPLACE) or not _valid_name(command.new_name):
            return False, None
        if not self._knows_names(command.new_parent):
            return False, None
        source = self._child(command.parent, command.name)
        target = self.cache.lookup(command.new_parent, command.new_name)
        exists = not self.cache.known_missing(command.new_parent, command.new_name)
        if source is None or stat.S_ISDIR(source.mode) or (exists and target is None):
            return False, None
        if target is not None and (stat.S_ISDIR(target.mode) or command.flags):
            return False, None  # EEXIST, EISDIR, ENOTEMPTY: the leader says which
        if target is not None and target.ino == source.ino:
            return False, None  # two names of one inode: rename does nothing
        now = command.now_ns
        shown = [effects.moved(source, now)]
        replaced = None if target is None else effects.link_dropped(target, now)
        shown += [] if replaced is None else [replaced]
        for directory in dict.fromkeys((command.parent, command.new_parent)):
            attr = self.cache.attr(directory)
            assert attr is not None
            shown.append(effects.entry_changed(attr, now))
        names = [(command.parent, command.name), (command.new_parent, command.new_name)]
        self._show(names, shown, [(command.new_parent, command.new_name, source.ino)])
        dirs = tuple(dict.fromkeys((command.parent, command.new_parent)))
        self._queue_change(command, dirs, tuple(attr.ino for attr in shown))
        return True, replaced

    def _child(self, directory: int, name: bytes) -> Attr | None:
        """The cached attributes of `name` in a directory whose names this mount knows."""
        attr = self.cache.lookup(directory, name) if self._knows_names(directory) else None
        return None if attr is None or attr.ino in self._riding else attr

    def _show(
        self,
        gone: list[tuple[int, bytes]],
        attrs: list[Attr],
        names: list[tuple[int, bytes, int]],
    ) -> None:
        """Make the cache show a change this mount acknowledged: names `gone`, then `names`
        made, and the attributes it leaves; the directories still have all their names. What
        it changes is dropped first, so a leader's answer already on its way (older) is not
        kept over it."""
        dirs = {parent for parent, _ in gone} | {parent for parent, _, _ in names}
        self.cache.forget([attr.ino for attr in attrs], gone)
        stamp = self.cache.stamp()
        for attr in attrs:
            self.cache.keep_attr(attr, stamp)
        for parent, name, ino in names:
            self.cache.keep_name(parent, name, ino, stamp)
        self.cache.mark_complete(dirs)

    # -- queueing ------------------------------------------------------------------------------

    def _queue_change(
        self, command: Command, relies_on: tuple[int, ...], shows: tuple[int, ...]
    ) -> None:
        """Queue an acknowledged change."""
        _count(self._foreseen, shows, +1)
        self._put(_Queued(command, relies_on, shows))

    def _put(self, item: _Queued, *, hurry: bool = True) -> None:
        """Queue `item`; one with a waiter hurries its batch unless `hurry` is False (its
        caller sends it)."""
        self._queue.append(item)
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        if self._due == math.inf:
            self._due = self._waiting.deadline = trio.current_time() + FLUSH_DELAY
        if item.waiter is not None and hurry:
            self._hurry.set()

    async def ride(self, command: Command) -> Any:
        """Send a command that changes no name behind the queued changes, in their batch;
        its result (the cache is brought up to date with the batch). Raises its NodeError."""
        item = _Queued(command, waiter=trio.Event())
        assert item.waiter is not None
        _count(self._riding, touched(command)[0], +1)
        try:
            self._sending.acquire_nowait()
        except trio.WouldBlock:
            self._put(item)  # a batch is on its way: `run` sends this one's next
        else:
            # Nothing on its way: sent from here, without waking `run` and being woken back.
            # A batch that left goes to its end, whatever becomes of this caller.
            try:
                self._put(item, hurry=False)
                with trio.CancelScope(shield=True):
                    await self._send_next()
            finally:
                self._sending.release()
        await item.waiter.wait()
        if item.error is not None:
            raise item.error
        assert item.outcome is not None
        return result_of(command, item.outcome)

    async def drain(self) -> None:
        """Return once every change queued before the call was applied by the leader.

        Raises NodeError(EIO) if acknowledged changes were lost since the last drain said so
        (an fsyncdir must not report them durable)."""
        await self.flushed()
        if self._lost != self._reported:
            self._reported = self._lost
            raise NodeError("EIO", "changes acknowledged by this mount were lost")

    async def drain_for(self, *inodes: int) -> None:
        """Return once the leader applied every queued change of these inodes (and so of all
        queued before them), for a query about them."""
        if any(self.foresees(ino) for ino in inodes):
            await self.flushed()

    def foresees(self, ino: int) -> bool:
        """Whether queued changes (or a command riding with them) change this inode: the
        leader's answers about it are older than what the cache shows until they are applied."""
        return ino in self._foreseen or ino in self._riding

    async def flushed(self) -> None:
        """Return once nothing is queued or on its way."""
        while self.busy:
            self._hurry.set()
            await self._idle.wait()

    def recall(self, dirs: tuple[int, ...]) -> None:
        """The leader wants these directories back: changes in them are no longer foreseen,
        and each is released behind the changes queued in it."""
        for directory in dirs:
            if directory in self._releasing:
                continue
            self.held.discard(directory)
            self._releasing.add(directory)
            self._put(_Queued(Release((directory,), self.cluster.client_id)))
        self._hurry.set()

    async def release_all(self) -> None:
        """At unmount: send what is queued and give back every directory held."""
        self.recall(tuple(sorted(self.held)))
        await self.flushed()

    def session_ended(self) -> None:
        """The metadata ended this mount's session: the directories it held and the inode
        numbers it reserved are not its any more."""
        self.held.clear()
        self._releasing.clear()
        self._free = range(0)

    async def take_ino(self) -> int:
        """An inode number reserved for this mount, or 0 if none could be reserved (the
        leader then picks one)."""
        if not self.enabled:
            return 0
        if not self._free:
            await self._reserve()
        return self._take_free() if self._free else 0

    def _take_free(self) -> int:
        ino, self._free = self._free[0], self._free[1:]
        return ino

    async def _reserve(self) -> None:
        """Reserve inode numbers, unless another task just did: behind the queued changes (a
        new range replaces the one they use), or at once if none are queued."""
        async with self._reserving:
            if not self._free:
                await self._reserve_now()

    async def _reserve_now(self) -> None:
        reserve = Reserve(RESERVE_COUNT)
        try:
            if self.busy:
                first = await self.ride(reserve)
            else:
                first = (await self.cluster.meta_command(reserve)).result
        except (NodeError, Unavailable, ProtocolError) as exc:
            log.warning("no inode numbers reserved: %s", exc)
            return
        self._free = range(first, first + RESERVE_COUNT)
        self._reserved.append(self._free)

    # -- sending -------------------------------------------------------------------------------

    async def run(self) -> None:
        """Send the queued changes in batches, one batch at a time, until cancelled."""
        while True:
            with trio.CancelScope(deadline=self._due) as self._waiting:
                await self._hurry.wait()
            self._hurry = trio.Event()
            async with self._sending:
                if self._queue:  # else a rider sent it meanwhile
                    await self._send_next()

    async def _send_next(self) -> None:
        """Send the oldest queued commands as one batch; the caller holds `_sending`."""
        batch = self._take_batch()
        if self._queue:
            self._hurry.set()  # the rest goes at once
        else:
            self._due = self._waiting.deadline = math.inf
        try:
            await self._send(batch)
        finally:
            if not self._queue:
                self._idle.set()

    def _take_batch(self) -> list[_Queued]:
        """The oldest queued commands, as many as one batch carries (at least one)."""
        size, count = 0, 0
        for item in self._queue:
            size += _weight(item.command)
            if count and (count == BATCH_COMMANDS or size > BATCH_BYTES):
                break
            count += 1
        batch, self._queue = self._queue[:count], self._queue[count:]
        return batch

    async def _send(self, batch: list[_Queued]) -> None:
        commands = tuple(item.command for item in batch)
        # Directories made in this batch are held from their Delegate on.
        born = {command.ino for command in commands if isinstance(command, Delegate)}
        held = tuple(sorted({d for item in batch for d in item.relies_on} - born))
        cache = self.cache
        seq = self.cluster.take_seq()
        cache.expect(seq)
        before, asked_at = cache.stamp(), cache.now()
        try:
            answer = await self.cluster.meta_command(Batch(held, commands), seq)
        except (NodeError, Unavailable, ProtocolError) as exc:
            cache.answered(seq, ())
            self._settle(batch)
            await self._failed(batch, exc)
            return
        outcomes: list[Outcome] = answer.result
        self._settle(batch)
        fresh = [
            attr
            for attr in answer.attrs
            if cache.may_keep(attr.ino, before) and attr.ino not in self._foreseen
        ]
        for item in batch:
            if item.waiter is not None:
                inodes, _ = touched(item.command)
                cache.forget([ino for ino in inodes if ino not in self._foreseen])
        stamp = cache.stamp()
        for attr in fresh:
            cache.keep_attr(attr, stamp)
            cache.watch(attr.ino, answer.term, stamp, asked_at)
        cache.answered(seq, {attr.ino for attr in fresh} | self._foreseen.keys())
        for item, outcome in zip(batch, outcomes, strict=True):
            if item.waiter is not None:
                item.outcome = outcome
                item.waiter.set()
            elif outcome.error is not None and not _moot(item.command, outcome):
                self._diverged(f"{item.command.OP} failed at the leader ({outcome.error})")
            if isinstance(item.command, Release):
                self._releasing.difference_update(item.command.dirs)

    def _settle(self, batch: list[_Queued]) -> None:
        """The batch's commands are applied (or never will be): the cache no longer
        foresees them."""
        for item in batch:
            _count(self._foreseen, item.shows, -1)
            if item.waiter is not None:
                _count(self._riding, touched(item.command)[0], -1)

    async def _failed(self, batch: list[_Queued], exc: BaseException) -> None:
        """No command of the batch was applied. Acknowledged changes are lost: say so, and
        stop foreseeing. Those with a caller waiting go again by themselves (ESTALE: this
        mount lost its directories) or fail with the batch."""
        acknowledged = [item for item in batch if item.waiter is None]
        riders = [item for item in batch if item.waiter is not None]
        lost = [i for i in acknowledged if not isinstance(i.command, (Release, Delegate))]
        for item in acknowledged:
            if isinstance(item.command, Release):
                self._releasing.difference_update(item.command.dirs)
        if lost:
            shown = ", ".join(_describe(item.command) for item in lost[:8])
            self._lost += 1
            self._diverged(f"{len(lost)} acknowledged changes are lost ({exc}): {shown}")
        if isinstance(exc, NodeError) and exc.name == "ESTALE" and riders:
            self.held.clear()
            for item in riders:  # riding again
                _count(self._riding, touched(item.command)[0], +1)
            await self._send(riders)
            return
        for item in riders:
            assert item.waiter is not None
            item.error = exc
            item.waiter.set()

    def _diverged(self, why: str) -> None:
        """What this mount showed is not what the leader holds: forget all of it."""
        log.error("names and attributes shown by this mount were wrong: %s", why)
        self.held.clear()
        self.cache.clear()


def result_of(command: Command, outcome: Outcome) -> Any:
    """The result of one command of a batch; raises its NodeError if it failed."""
    if outcome.error is not None:
        raise NodeError(outcome.error, f"{command.OP} in a batch")
    try:
        return decode_result(command, outcome.result)
    except NodeError as exc:
        raise ProtocolError(f"malformed {command.OP} result: {exc}") from exc


def _count(counts: dict[int, int], inodes: Iterable[int], step: int) -> None:
    for ino in inodes:
        left = counts.get(ino, 0) + step
        if left:
            counts[ino] = left
        else:
            del counts[ino]


def _moot(command: Command, outcome: Outcome) -> bool:
    """A change of attributes of a file another client removed first: nothing to show."""
    return isinstance(command, Setattr) and outcome.error == "ENOENT"


def _weight(command: Command) -> int:
    """About how many bytes a command takes on the wire."""
    if isinstance(command, CommitChunks):
        return 128 + sum(96 + len(update.chunk.data) for update in command.updates)
    return 128 + len(getattr(command, "name", b"")) + len(getattr(command, "target", b""))


def _valid_name(name: bytes) -> bool:
    """Whether the state machine takes `name` (else it answers the error itself)."""
    try:
        check_name(name)
    except NodeError:
        return False
    return True


def _describe(command: Command) -> str:
    name = getattr(command, "name", None)
    return f"{command.OP} {name!r}" if name is not None else command.OP
