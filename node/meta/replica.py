"""The metadata, replicated: the state machine Raft drives, and the service nodes answer with.

`MetaMachine` adapts `MetaState` to the Raft shell: committed entries become one
`apply_batch` that also records the applied index, in transactions several batches share, so
a restarted node resumes exactly where its database is. `ReplicatedMeta` is what a member of
the meta group serves: it stamps each command with the time (decided before the command
enters the log), proposes it, and answers with the outcome once it is committed and applied;
queries are linearizable reads (ReadIndex) on the leader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

import msgpack
import trio

from ringfs.node.durable import fsync_dir
from ringfs.node.errors import DELEGATED, IN_DOUBT, NOT_LEADER, NodeError, StorageFailure
from ringfs.node.meta.commands import (
    Attr,
    Batch,
    Command,
    Entry,
    Init,
    Outcome,
    Query,
    ReadChunks,
    Release,
    encode_result,
)
from ringfs.node.meta.delegations import Recalls
from ringfs.node.meta.feed import Change, ChangeFeed, Changes
from ringfs.node.meta.membership import MetaMembership
from ringfs.node.meta.state import MetaState
from ringfs.node.meta.watches import Watches, watchable
from ringfs.node.raft.core import Entry as LogEntry
from ringfs.node.raft.core import EntryKind, NotLeader, SnapshotMeta
from ringfs.node.raft.images import ImageReceiver
from ringfs.node.raft.shell import LeadershipLost, RaftNode, StateMachine, Transport
from ringfs.node.raft.storage import LEGACY_DB, LOG_DIR, RaftLog

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds a poll of the change feed waits for another client's change before it answers that
# nothing changed (its own changes wait with it).
FEED_WAIT = 0.25
# Seconds a poll that waited goes on gathering after the first change: one answer then carries
# the next few commands' changes too, where one after another each would cost a round trip.
FEED_GATHER = 0.005
# Seconds between checks of a recall's progress, besides every apply.
RECALL_CHECK = 0.05
# Without a snapshot count given, a member snapshots after this many entries, once they hold
# half the size of its last image (see `Snapshots`): copying a large meta.db every thousand
# commands cost more than the log it saved.
SNAPSHOT_MIN_ENTRIES = 1000
SNAPSHOT_SHARE = 0.5
# Seconds between checks that the filesystem exists, until this node made sure it does.
INIT_POLL = 0.2
# Most seconds, and most batches, that applied batches stay uncommitted in `meta.db`: one
# commit then covers many (a commit of one small file's batch was half the cost of applying it).
COMMIT_INTERVAL = 0.1
COMMIT_BATCHES = 256
# Seconds between checkpoints of meta.db's WAL, in a worker thread.
CHECKPOINT_INTERVAL = 1.0
# The applied index a database (or an image of one) holds.
_APPLIED = "SELECT value FROM counters WHERE name = 'applied_index'"


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """What applying one command gave: its outcome, and the inodes whose attributes it
    changed (the client gets their new attributes with the outcome)."""

    outcome: Outcome
    changed: tuple[int, ...] = ()
    #: The command's log index: its answer waits for what changes up to it hold back.
    index: int = 0
    #: Of `changed`, those its client watches from then on (`ringfs.node.meta.watches`).
    watchable: tuple[int, ...] = ()


#: A change, and the inodes its client watches from then on (see `watchable`).
Watchable = tuple[Change, tuple[int, ...]]


def stamp(command: Command, now_ns: int) -> Command:
    """Fill in the decision the state machine must not make itself: the current time, where
    the client did not give it (a mount gives the time of a change it acknowledged itself)."""
    if isinstance(command, Batch):
        return Batch(command.held, tuple(stamp(c, now_ns) for c in command.commands))
    if getattr(command, "now_ns", None) == 0:
        stamped: Command = dataclasses.replace(cast(Any, command), now_ns=now_ns)
        return stamped
    return command


def is_whole_database(path: Path) -> bool:
    """Whether `path` is an SQLite database that passes its own quick check."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return bool(db.execute("PRAGMA quick_check").fetchone() == ("ok",))
    except sqlite3.DatabaseError:
        return False


def copy_database(source: Path, target: Path) -> int:
    """Copy the database at `source` to the new file `target`, durably, as it was at one
    moment; return the applied index of that moment.

    The copy reads through a connection of its own, read-only, in one backup step: one read
    transaction, which WAL keeps consistent while the replica's own connection goes on
    applying. Raises sqlite3.Error or OSError.
    """
    with (
        contextlib.closing(sqlite3.connect(f"file:{source}?mode=ro", uri=True)) as db,
        contextlib.closing(sqlite3.connect(target)) as copy,
    ):
        db.backup(copy)  # all pages in one step
        (index,) = copy.execute(_APPLIED).fetchone()
    _fsync(target)
    return int(index)


def _check_image(image: Path, index: int) -> None:
    """Raises StorageFailure unless `image` is a whole database at applied index `index`."""
    if is_whole_database(image):
        with contextlib.closing(sqlite3.connect(f"file:{image}?mode=ro", uri=True)) as db:
            row = db.execute(_APPLIED).fetchone()
        if row == (index,):
            return
    # The core has dropped its log for this snapshot: the member restarts from its storage.
    raise StorageFailure(f"snapshot image at index {index} is damaged")


def _fsync(path: Path) -> None:
    with open(path, "rb+") as file:
        os.fsync(file.fileno())


class MetaMachine:
    """`StateMachine` over the metadata database: batches are applied on the event loop (no
    fsync: the Raft log is the durable copy), and so are the queries; snapshots are taken (on
    a connection of their own, while applying goes on) and restored in worker threads.

    Batches are committed together, every `COMMIT_INTERVAL` seconds or `COMMIT_BATCHES`
    batches, before a snapshot, and at close. Queries read them at once (the same
    connection). A crash takes back what was not committed, with its `applied_index`, and the
    log applies it again, as it does after a power loss. What is committed reaches meta.db
    itself at the next `checkpoint`.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = self._open_state()
        self.feed = ChangeFeed(self.state.applied_index)
        #: Told of each batch's changes as they are applied (the leader's watches).
        self.on_changes: Callable[[list[Watchable]], None] | None = None
        self.batches = 0
        self.commands = 0
        self._uncommitted = 0
        self._uncommitted_since = 0.0
        # One snapshot or restore at a time: a restore replaces the file a snapshot reads.
        self._files = threading.Lock()
        self._numbers = itertools.count()
        # This member's own proposals waiting to be applied, by their data's identity: the
        # entry each was encoded from (see `proposing`).
        self._proposing: dict[int, tuple[bytes, Entry]] = {}
        # Images a previous run took: nobody sends them any more.
        for leftover in self.path.parent.glob(f"{self.path.name}.snapshot-*"):
            leftover.unlink()

    def _open_state(self) -> MetaState:
        # Not fsync'd per batch: the Raft log holds the commands durably and replays them.
        # Checkpointed in a worker thread (`checkpoint`), never while applying.
        return MetaState(self.path, synchronous=False, auto_checkpoint=False)

    @contextlib.contextmanager
    def proposing(self, data: bytes, entry: Entry) -> Iterator[None]:
        """While the caller waits for `data`, encoded from `entry`, to be applied: apply the
        log entry holding this very object as `entry`, without decoding it again. The leader
        thus decodes its own commands once, and followers decode the same bytes into an equal
        entry; a log entry read back from disk is another object, and is decoded."""
        self._proposing[id(data)] = (data, entry)
        try:
            yield
        finally:
            del self._proposing[id(data)]

    def _entry(self, data: bytes) -> Entry:
        proposed = self._proposing.get(id(data))
        if proposed is not None and proposed[0] is data:
            return proposed[1]
        return Entry.from_wire(msgpack.unpackb(data, raw=False))

    def apply(self, entries: Sequence[LogEntry]) -> list[Any]:
        logged = [e for e in entries if e.kind is EntryKind.COMMAND]
        commands = [self._entry(e.data) for e in logged]
        # One transaction with the applied index. A bug in a command answers EIO for that
        # command alone, inside it; whatever escapes is this node's own failure (its disk,
        # its memory), so it stops rather than differ from its peers (the log replays).
        try:
            results = self.state.apply_batch(
                commands, last_index=entries[-1].index, commit=self._commit_due()
            )
        except Exception as exc:
            raise StorageFailure(f"metadata database {self.path}: {exc}") from exc
        changes: list[Watchable] = []
        applied = []
        touched = zip(logged, commands, results, self.state.take_changes(), strict=True)
        for entry, command, outcome, (client, inodes, names) in touched:
            watched = watchable(inodes, names)
            if inodes or names:
                change = Change(entry.index, client, command.seq, tuple(inodes), tuple(names))
                changes.append((change, watched))
            applied.append(Applied(outcome, tuple(inodes), entry.index, watched))
        self.feed.add([change for change, _ in changes], entries[-1].index)
        if self.on_changes is not None:
            self.on_changes(changes)
        self.batches += 1
        self.commands += len(commands)
        answers = iter(applied)
        return [next(answers) if e.kind is EntryKind.COMMAND else None for e in entries]

    def _commit_due(self) -> bool:
        """Whether the batch about to be applied should commit those left open before it."""
        now = time.monotonic()
        if not self._uncommitted:
            self._uncommitted_since = now
        self._uncommitted += 1
        if self._uncommitted < COMMIT_BATCHES and now - self._uncommitted_since < COMMIT_INTERVAL:
            return False
        self._uncommitted = 0
        return True

    def commit_due(self) -> None:
        """Commit the batches left open once `COMMIT_INTERVAL` passed since the first, when no
        batch came to do it (called periodically). Raises StorageFailure."""
        if not self._uncommitted or time.monotonic() - self._uncommitted_since < COMMIT_INTERVAL:
            return
        self._uncommitted = 0
        try:
            self.state.commit()
        except sqlite3.Error as exc:
            raise StorageFailure(f"metadata database {self.path}: {exc}") from exc

    def checkpoint(self) -> None:
        """Copy the pages committed to the WAL into meta.db, on a connection of its own and
        without waiting for anyone (PASSIVE): for a worker thread, while applying goes on (its
        connection never checkpoints, `open_database`). Raises StorageFailure."""
        with self._files:
            try:
                with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as db:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                raise StorageFailure(f"checkpoint of {self.path}: {exc}") from exc

    def applied_index(self) -> int:
        return self.state.applied_index

    def snapshot(self) -> tuple[int, Path]:
        """A durable image file of the state at one moment, and the index applied then; the
        caller deletes it when done with it.

        Runs while `apply` goes on. Everything up to the image's index is made durable in the
        database too (its WAL is synced): the Raft log up to it is compacted away next and
        must not be needed to replay it after a power loss. Raises StorageFailure.
        """
        with self._files:
            partial = self.path.with_name(f"{self.path.name}.snapshot-partial")
            try:
                self.state.commit()  # the copy reads what is committed
                partial.unlink(missing_ok=True)
                index = copy_database(self.path, partial)
                wal = Path(f"{self.path}-wal")
                if wal.exists():
                    _fsync(wal)
                # Each image its own name: two of one index are still two files to delete.
                number = next(self._numbers)
                image = self.path.with_name(f"{self.path.name}.snapshot-{index}-{number}")
                os.replace(partial, image)
                fsync_dir(self.path.parent)
            except (OSError, sqlite3.Error) as exc:
                partial.unlink(missing_ok=True)
                raise StorageFailure(f"snapshot of {self.path}: {exc}") from exc
            return index, image

    def restore(self, meta: SnapshotMeta, image: Path) -> None:
        """Replace the state by the image file at `meta` (which this takes over). Raises
        StorageFailure, with the database kept, for an image that is damaged or not at
        `meta.last_index`, or a disk that fails."""
        with self._files:
            try:
                _fsync(image)
                _check_image(image, meta.last_index)
                self.state.close()
                try:
                    for suffix in ("-wal", "-shm"):
                        Path(f"{self.path}{suffix}").unlink(missing_ok=True)
                    os.replace(image, self.path)
                    fsync_dir(self.path.parent)  # the log is compacted next: it must stay
                finally:
                    self.state = self._open_state()
                    self.feed.restart(self.state.applied_index)
            except (OSError, sqlite3.Error) as exc:
                raise StorageFailure(f"snapshot install into {self.path}: {exc}") from exc
            finally:
                image.unlink(missing_ok=True)

    def reopen(self) -> None:
        """Close the database and open it again, as a restarted node would (a connection that
        met a failing disk is not trusted further). Raises StorageFailure."""
        with self._files:
            self.state.close()
            try:
                self.state = self._open_state()
            except sqlite3.Error as exc:
                raise StorageFailure(f"metadata database {self.path}: {exc}") from exc
            self.feed.restart(self.state.applied_index)

    def stats(self) -> dict[str, Any]:
        per_batch = self.commands / self.batches if self.batches else 0.0
        return {"batches": self.batches, "commands": self.commands, "commands_per_batch": per_batch}


@dataclasses.dataclass(frozen=True)
class MetaGroup:
    """What a member knows of its group from the cluster map: `founders`, the configuration
    the group started with; `wanted`, the group the map names now (the Raft group follows it:
    `ringfs.node.meta.membership`); `members`, every node that may be in the group, whose
    Raft messages it takes."""

    founders: tuple[str, ...]
    wanted: Callable[[], Sequence[str]]
    members: Callable[[], Collection[str]]


class ReplicatedMeta:
    """The metadata service of a meta-group member."""

    def __init__(
        self,
        node_id: str,
        group: MetaGroup,
        data_dir: Path,
        transport: Transport,
        chunk_size: int,
        snapshot_every: int | None,
    ) -> None:
        """`snapshot_every`: snapshot every that many entries; None: by the size of the log
        against the state (`SNAPSHOT_SHARE`)."""
        self.machine = MetaMachine(data_dir / "meta.db")
        self.storage = RaftLog(data_dir / LOG_DIR, legacy=data_dir / LEGACY_DB)
        # Snapshot images arriving from the leader, part by part.
        self.images = ImageReceiver(data_dir / "incoming")
        self.raft = RaftNode(
            node_id,
            group.founders,
            self.storage,
            self.machine,
            transport,
            rng=random.Random(),
            snapshot_threshold=snapshot_every or SNAPSHOT_MIN_ENTRIES,
            snapshot_share=SNAPSHOT_SHARE if snapshot_every is None else None,
            peers=group.members,
        )
        self.membership = MetaMembership(self.raft, group.wanted)
        self.chunk_size = chunk_size
        self.recalls = Recalls(trio.current_time)
        # The watches registered while this member last led (`ringfs.node.meta.watches`):
        # kept after it stops leading, for the answers still waiting on them.
        self._watches: Watches | None = None
        self._polled = trio.Event()
        self.machine.on_changes = self._changed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the Raft member until cancelled; the filesystem is created by the first leader."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.raft.run)
                nursery.start_soon(self._ensure_initialized, name="meta-init")
                nursery.start_soon(self.membership.run, name="meta-membership")
                nursery.start_soon(self._commit_applied, name="meta-commit")
                nursery.start_soon(self._checkpoint_applied, name="meta-checkpoint")
                task_status.started()
        finally:
            self.images.close()
            self.storage.close()
            self.machine.state.close()

    async def _commit_applied(self) -> None:
        """Commit what applying left open, also when no more batches come (`MetaMachine`)."""
        while True:
            await trio.sleep(COMMIT_INTERVAL)
            try:
                self.machine.commit_due()
            except StorageFailure as exc:  # the database is closed: nothing may read it
                self.raft.storage_failed(exc)

    async def _checkpoint_applied(self) -> None:
        """Checkpoint meta.db's WAL every `CHECKPOINT_INTERVAL`, in a worker thread: the event
        loop goes on applying and answering meanwhile. With nothing new in the WAL, SQLite
        neither copies nor syncs anything."""
        while True:
            await trio.sleep(CHECKPOINT_INTERVAL)
            try:
                await trio.to_thread.run_sync(self.machine.checkpoint)
            except StorageFailure as exc:  # the WAL keeps the pages until one succeeds
                log.error("%s", exc)

    async def _ensure_initialized(self) -> None:
        """Create the root directory once, through the log (Init is idempotent)."""
        while True:
            if self.raft.raft.role == "leader":
                try:
                    init = Init(self.chunk_size, os.getuid(), os.getgid(), 0)
                    outcome, *_ = await self.apply(init, None, None, None)
                except NodeError:
                    outcome = None
                if outcome is not None:
                    if outcome.error is not None:
                        log.error("cannot create the filesystem: %s", outcome.error)
                    return
            await trio.sleep(INIT_POLL)

    async def apply(
        self, command: Command, client_id: bytes | None, seq: int | None, acked_below: int | None
    ) -> tuple[Outcome, list[Attr], int]:
        """Replicate a command and return its outcome, with the attributes (as of now, so of
        the command or later) of the inodes it changed, and the term of this leader if
        `client_id` watches those inodes now (else 0; see `ringfs.node.meta.watches`).

        Raises NodeError(NOT_LEADER, leader) when this node did not propose it (or another
        leader's entry took its place: it will never be applied), NodeError(IN_DOUBT, leader)
        when it lost the lead after proposing it (a retry with the same client id and seq
        tells whether it was applied). A command that would change names in a directory
        another client holds waits until that client gave it back (or lost it), then goes in.
        The answer waits until the other mounts that kept maps of what it changed heard of it.
        """
        while True:
            applied = await self._apply(command, client_id, seq, acked_below)
            if applied.outcome.error != DELEGATED:
                break
            await self._recall(applied.outcome.result, client_id)
        term = await self._answerable(applied, client_id)
        return applied.outcome, self.machine.state.attrs(applied.changed), term

    def _leader_watches(self) -> Watches | None:
        """This member's watches while it leads (new ones for each term), else for a while
        those of the term it last led in (see `Watches.end_lead`), else None."""
        raft = self.raft.raft
        if raft.role == "leader":
            if self._watches is None or self._watches.term != raft.term:
                self._watches = Watches(raft.term, self.machine.state.next_ino(), trio.current_time)
        elif self._watches is not None and self._watches.end_lead():
            self._watches = None
        return self._watches

    def _changed(self, changes: list[Watchable]) -> None:
        """A batch applied: the answers of its changes wait for the other watchers."""
        watches = self._leader_watches()
        if watches is not None:
            leading = self.raft.raft.role == "leader"
            for change, registered in changes:
                watches.changed(change.index, change.client_id, change.inodes, registered, leading)

    async def _answerable(self, applied: Applied, client_id: bytes | None) -> int:
        """Wait until the answer of `applied` may go out; return the term in which
        `client_id` watches the inodes it changed (0: it does not)."""
        watches = self._leader_watches()
        if watches is None or client_id is None:
            return 0  # never led: no mount trusts a watch of it; or nobody waits for the answer
        while (delay := watches.delay(applied.index, client_id)) > 0:
            with trio.move_on_after(delay):
                await self._polled.wait()
        raft = self.raft.raft
        if raft.role != "leader" or raft.term != watches.term:
            return 0
        return watches.term if watches.watching(client_id, applied.watchable) else 0

    async def _recall(self, dirs: list[int], requester: bytes | None) -> None:
        """Get `dirs` back from the clients other than `requester` that hold them: ask each
        through its feed, and release for it everything one that stopped polling holds."""
        waiting_since = trio.current_time()
        while True:
            if self.raft.raft.role != "leader":
                raise NodeError(NOT_LEADER, self.raft.raft.leader or "")
            held: dict[bytes, list[int]] = {}
            for directory, holder in self.machine.state.holders(dirs).items():
                if holder != requester:
                    held.setdefault(holder, []).append(directory)
            if not held:
                return
            for holder, taken in sorted(held.items()):
                if self.recalls.expired(holder, waiting_since):
                    # All it holds: the next command in another of them need not wait again.
                    log.warning(
                        "client %s stopped answering: every directory it held is released",
                        holder.hex(),
                    )
                    self.recalls.forget(holder)
                    await self._apply(Release((), holder), None, None, None)
                elif self.recalls.want(holder, taken):
                    self.machine.feed.nudge()
            with trio.move_on_after(RECALL_CHECK):
                await self.machine.feed.wait_after(self.machine.feed.applied)

    async def _apply(
        self, command: Command, client_id: bytes | None, seq: int | None, acked_below: int | None
    ) -> Applied:
        entry = Entry(stamp(command, time.time_ns()), client_id, seq, acked_below)
        data = msgpack.packb(entry.to_wire(), use_bin_type=True)
        try:
            with self.machine.proposing(data, entry):
                applied: Applied = await self.raft.apply(data)
        except NotLeader as exc:
            raise NodeError(NOT_LEADER, exc.leader or "") from None
        except LeadershipLost as exc:
            raise NodeError(IN_DOUBT, self.raft.raft.leader or "") from exc
        return applied

    async def query(self, query: Query) -> Any:
        """Answer a read-only query linearizably (on the leader, after ReadIndex)."""

        def run(machine: StateMachine) -> Any:
            assert isinstance(machine, MetaMachine)
            return encode_result(machine.state.query(query))

        return await self._read(run)

    async def read_chunks(self, query: ReadChunks, client_id: bytes) -> tuple[Any, int]:
        """Answer `query` like `query`, and register `client_id` as watching the file; return
        the answer and this leader's term (0 if there was no room to watch it)."""

        def run(machine: StateMachine) -> tuple[Any, int]:
            assert isinstance(machine, MetaMachine)
            answer = encode_result(machine.state.query(query))
            watches = self._leader_watches()
            if watches is None or not watches.watch(client_id, (query.ino,)):
                return answer, 0
            return answer, watches.term

        return await self._read(run)

    async def changes(self, since: int, client_id: bytes) -> Changes:
        """What changed after log index `since` (see `ringfs.node.meta.feed`), as fresh as a
        linearizable read: everything applied before the call is in it, with the directories
        `client_id` is asked to give back. Waits up to `FEED_WAIT` for a first change by another
        client or a recall, so a mount's poll doubles as its heartbeat."""
        watches = self._leader_watches()
        if watches is None or self.raft.raft.role != "leader":
            raise NodeError(NOT_LEADER, self.raft.raft.leader or "")
        self.recalls.seen(client_id)
        watches.polled(client_id, since)
        self._polled.set()
        self._polled = trio.Event()
        feed = self.machine.feed
        if not (feed.news_after(since, client_id) or self.recalls.wanted(client_id)):
            with trio.move_on_after(FEED_WAIT):
                await feed.wait_after(since, mine=client_id)
                if not watches.awaits(client_id):  # else an answer waits for this one
                    await trio.sleep(FEED_GATHER)

        def run(machine: StateMachine) -> Changes:
            assert isinstance(machine, MetaMachine)
            return machine.feed.since(since)

        changes = await self._read(run)
        if self._leader_watches() is not watches:  # it led again since: ask that leader
            raise NodeError(NOT_LEADER, self.raft.raft.leader or "")
        self.recalls.seen(client_id)
        wanted = self.recalls.wanted(client_id)
        if wanted:
            held = self.machine.state.holders(wanted)
            recalled = tuple(sorted(d for d, holder in held.items() if holder == client_id))
            self.recalls.still_held(client_id, recalled)
            changes = dataclasses.replace(changes, recalls=recalled)
        return dataclasses.replace(changes, term=watches.term)

    async def _read(self, read: Callable[[StateMachine], T]) -> T:
        try:
            return await self.raft.read(read)
        except NotLeader as exc:
            raise NodeError(NOT_LEADER, exc.leader or "") from None
        except LeadershipLost:
            raise NodeError(NOT_LEADER, self.raft.raft.leader or "") from None

    def stats(self) -> dict[str, Any]:
        return {**self.machine.stats(), **self.raft.status()}
