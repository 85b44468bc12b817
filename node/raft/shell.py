"""The trio shell around the Raft core: time, persistence, messages, applying, waiting.

`RaftNode` owns one `Raft` core. Its loop turns ticks and received messages into core calls
and processes what they return in the order Raft requires: persist (term, vote, entries:
one fsync for everything gathered since the last round, which is the group commit), then
send, then apply committed entries to the state machine, then answer reads. A replication
message that finds the loop idle is processed the same way by `deliver`, in the task that
received it. Callers `apply` commands and `read` state; both wait for the outcome. The
storage, the state machine and the transport are interfaces, so the same shell runs in a node
process and in the deterministic simulation.

Snapshots are taken beside the loop (`snapshots.py`). When this member's storage fails (a full
disk, an I/O error: `StorageFailure`), it stops taking part in the group, so nothing leaves it
that rests on state it could not write, and reopens its core from storage after a back-off,
again until it works; the node process goes on serving everything else.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import trio

from ringfs.node.errors import StorageFailure
from ringfs.node.raft.core import (
    AppendRequest,
    AppendResponse,
    Entry,
    HardState,
    Message,
    NotLeader,
    Raft,
    Ready,
    SnapshotMeta,
    SnapshotRequest,
)
from ringfs.node.raft.messages import EMPTY_READY, refusal
from ringfs.node.raft.snapshots import Snapshots

log = logging.getLogger(__name__)

T = TypeVar("T")
# What `RaftStorage.load` gives back.
Loaded = tuple[HardState, SnapshotMeta | None, list[Entry]]

# A follower applies committed entries on each tick, or sooner once this many wait.
FOLLOWER_APPLY_BATCH = 256
# Seconds before a member whose storage failed reopens it, doubled after each failure up to
# the last value; a member that then ran that long without failing starts again from the first.
RETRY_FIRST = 1.0
RETRY_LAST = 30.0
# Seconds a log write may take for a leader to write its next one inline (see `_save`).
SLOW_LOG_WRITE = 0.002

__all__ = ["LeadershipLost", "NotLeader", "RaftNode"]


class LeadershipLost(Exception):
    """This node stopped leading after it proposed the command and before the outcome was
    known: a later leader may still commit it. A retry with the same client id and seq tells
    (it is applied at most once). A command that was never proposed, or whose place in the log
    another leader's entry took, fails with NotLeader instead: it will never be applied."""


class RaftStorage(Protocol):
    """Durable Raft state: whatever `save` or `compact` got survives a crash."""

    def load(self) -> Loaded: ...

    def save(
        self, hard_state: HardState | None, truncate_from: int | None, append: Sequence[Entry]
    ) -> None: ...

    def compact(self, meta: SnapshotMeta) -> None: ...


class StateMachine(Protocol):
    """What Raft replicates. Durable: `apply` records the applied index with its effects.

    `apply` and read queries run on the event loop and must be quick (no fsync); `snapshot`,
    `restore` and `reopen` run in a worker thread. `snapshot` runs while `apply` goes on.
    A failure of the machine's own storage raises StorageFailure.
    """

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        """Apply committed entries in order (NOOP and CONFIG ones only advance the applied
        index); one result per entry."""
        ...

    def applied_index(self) -> int: ...

    def snapshot(self) -> tuple[int, Path]:
        """(an index applied, a durable image file of the state at that index)."""
        ...

    def restore(self, meta: SnapshotMeta, image: Path) -> None:
        """Replace the state by the image file (which the machine takes over)."""
        ...

    def reopen(self) -> None:
        """Start again from what the machine's storage holds, after a failure."""
        ...


class Transport(Protocol):
    def send(self, message: Message, snapshot: Path | None = None) -> None:
        """Best effort, never blocks, never raises for a network failure."""
        ...


@dataclass
class _Waiter:
    done: trio.Event
    # The term a proposal was made in: an entry of another term in its place is not it.
    term: int = 0
    result: Any = None
    failure: BaseException | None = None

    def finish(self, result: Any = None, failure: BaseException | None = None) -> None:
        self.result, self.failure = result, failure
        self.done.set()


class RaftNode:
    """One member of a Raft group, on trio."""

    def __init__(
        self,
        node_id: str,
        voters: tuple[str, ...],
        storage: RaftStorage,
        machine: StateMachine,
        transport: Transport,
        *,
        rng: random.Random,
        tick_interval: float = 0.05,
        snapshot_threshold: int = 1000,
        snapshot_share: float | None = None,
        blocking_io: bool = True,
        incarnation: Callable[[], int] = time.time_ns,
        peers: Callable[[], Collection[str]] | None = None,
    ) -> None:
        """`voters`: the group's initial configuration (before its log says otherwise).
        `peers`: the nodes it takes messages from (by default `voters`): every node that may
        be in the group, as the configuration changes.
        `snapshot_threshold` and `snapshot_share`: when to snapshot (see `Snapshots`).
        `blocking_io=False` runs storage and state machine calls inline (the simulation,
        whose fakes never block: worker threads would break its deterministic clock).
        `incarnation` numbers each start of the core, higher each time (see `Raft`): the
        wall clock's nanoseconds, which a restart does not take back."""
        self.node_id = node_id
        self.storage = storage
        self.machine = machine
        self.transport = transport
        self.tick_interval = tick_interval
        self._voters, self._rng, self._incarnation = voters, rng, incarnation
        self._blocking_io = blocking_io
        # Image files no longer needed (a newer snapshot replaced them), for the loop to delete.
        self._stale_images: list[Path] = []
        self._snapshots = Snapshots(
            node_id,
            storage,
            machine,
            transport,
            threshold=snapshot_threshold,
            share=snapshot_share,
            io=self._io,
            discard=self._stale_images.append,
        )
        self._pending = EMPTY_READY
        self._inbox: deque[tuple[Message, Path | None]] = deque()
        # Ticks are counted from the clock, not from wake-ups, so a stall is not time that
        # never passed (the leader lease relies on it).
        self._clock_start: float | None = None
        self._ticks_done = 0
        # Committed entries a follower has yet to apply, and the tick it last applied at.
        self._unapplied: list[Entry] = []
        self._applied_at_tick = 0
        self._wakeup = trio.Event()
        # Whether the loop waits for `_wakeup` with nothing left to do: a message may then be
        # stepped at once (`_step_now`). A failure met there, for the loop to raise.
        self._idle = False
        self._failed_now: Exception | None = None
        # Whether this member's last log write took longer than SLOW_LOG_WRITE.
        self._slow_log = False
        # Commands waiting for the loop to propose them together (one AppendRequest each).
        self._queued: list[tuple[bytes, _Waiter]] = []
        self._proposals: dict[int, _Waiter] = {}
        self._reads: dict[int, _Waiter] = {}
        self._read_after: list[tuple[int, int]] = []
        self._next_read = 1
        self._was_leader = False
        self._peers = peers or (lambda: voters)
        self._warned: set[str] = set()
        self._nursery: trio.Nursery | None = None
        # Why this member stopped taking part (its storage failed), until it reopened.
        self._failure: str | None = None
        self._open(storage.load(), machine.applied_index())

    def _open(self, loaded: Loaded, applied: int) -> None:
        """A new core from what the storage holds: at the start, and after a failure."""
        hard_state, snapshot, entries = loaded
        self.raft = Raft(
            self.node_id,
            self._voters,
            hard_state=hard_state,
            snapshot=snapshot,
            entries=entries,
            rng=self._rng,
            incarnation=self._incarnation(),
        )
        self._applied = applied
        self._pending, self._unapplied, self._was_leader = EMPTY_READY, [], False
        self._inbox.clear()
        self._snapshots.reset(snapshot.last_index if snapshot else 0)

    # -- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick and process until cancelled. Cancellation fails every waiting caller."""
        self._clock_start = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._ticker, name=f"raft-ticker {self.node_id}")
                task_status.started()
                await self._keep_running()
        finally:
            self._fail_waiters(LeadershipLost(f"node {self.node_id} stopped"))

    async def _keep_running(self) -> None:
        """The loop, and after each storage failure a pause (doubling, up to `RETRY_LAST`)
        before the member reopens its storage and takes part again."""
        delay = RETRY_FIRST
        while True:
            started = trio.current_time()
            try:
                await self._loop()
            except StorageFailure as exc:
                self._stop(exc)
            if trio.current_time() - started > RETRY_LAST:
                delay = RETRY_FIRST
            while True:
                log.error("node %s: storage failed (%s): not taking part in the Raft group; "
                          "trying again in %.0fs", self.node_id, self._failure, delay)  # fmt: skip
                await trio.sleep(delay)
                delay = min(2 * delay, RETRY_LAST)
                try:
                    await self._reopen()
                    break
                except StorageFailure as exc:
                    self._failure = str(exc)

    def _stop(self, failure: StorageFailure) -> None:
        """Take part in nothing any more: what the core holds may not be on disk. The core
        steps down, so that nothing in this node takes it for a leader, and nothing it
        returns is acted on."""
        self._failure = str(failure)
        self.raft.step_down()
        self._fail_waiters(LeadershipLost(f"node {self.node_id}: {failure}"))
        self._was_leader = False
        self._inbox.clear()

    async def _reopen(self) -> None:
        """A new core from the storage, and the state machine from its own, as after a
        restart (a new incarnation: its leader counts nothing from before)."""
        await self._io(self.machine.reopen)
        loaded = await self._io(self.storage.load)
        self._open(loaded, await self._io(self.machine.applied_index))
        self._ticks_done = self._ticks_due()  # the time away is not ticks of the new core
        self._failure = None
        log.info("node %s: storage reopened, taking part in the Raft group again", self.node_id)

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick_interval)
            self._wakeup.set()

    def _ticks_due(self) -> int:
        if self._clock_start is None:
            return 0
        return int((trio.current_time() - self._clock_start) / self.tick_interval)

    def _advance_clock(self) -> None:
        """Give the core every tick that is due by now (several after a stall)."""
        due = self._ticks_due()
        while self._ticks_done < due:
            self._ticks_done += 1
            self._pending = self._pending.merge(self.raft.tick())

    def deliver(self, message: Message, snapshot: Path | None = None) -> None:
        """Queue a message that arrived, with the image file of a snapshot, or step it now
        (`_step_now`); called by the transport, never waits (a follower's log write on receipt
        is inline, as in the loop). One that this member must not take (see `refusal`) is
        dropped, with a WARNING once per cause; so is everything while its storage failed."""
        if not self._takes(message):
            if snapshot is not None:
                self._stale_images.append(snapshot)
            return
        if isinstance(message, SnapshotRequest) and snapshot is None:
            log.warning("node %s: snapshot from %s came without its image: dropped", self.node_id,
                        message.src)  # fmt: skip
            return
        if isinstance(message, SnapshotRequest):
            # A newer snapshot makes one still waiting pointless: installing both is wasted work.
            for waiting, image in self._inbox:
                if isinstance(waiting, SnapshotRequest) and image is not None:
                    self._stale_images.append(image)
            self._inbox = deque(m for m in self._inbox if not isinstance(m[0], SnapshotRequest))
        elif self._step_now(message):
            return
        self._inbox.append((message, snapshot))
        self._wakeup.set()

    def storage_failed(self, failure: StorageFailure) -> None:
        """A failure of this member's storage met beside the loop (the state machine's commit
        of what it applied): the loop stops on it at once, as on one of its own, and the
        member reopens its storage."""
        if self._failure is None:
            self._failed_now = failure
            self._wakeup.set()

    def _step_now(self, message: Message) -> bool:
        """Step a replication message in the task that received it, while the loop has nothing
        else to do, and act on it unless that means waiting (the leader's log write): the
        answer leaves without waiting for the loop's turn, a pass of the scheduler less at
        each member on a command's path. Returns False, stepping nothing, if the loop must
        take the message.

        The loop is woken either way: messages that arrive right behind this one (in the same
        read) queue for it and are stepped together, with one log write."""
        if not isinstance(message, _STEPPED_NOW) or not self._take_the_loops_turn():
            return False
        ready = self.raft.step(message)
        if ready.install_snapshot is not None or (self.raft.role == "leader" and _writes(ready)):
            self._pending = ready
            return True
        self._process_now(ready)
        return True

    def _take_the_loops_turn(self) -> bool:
        """Whether the caller may step the core and act in its own task, in the loop's stead:
        only while the loop waits with nothing to do (no failure for it to stop on either),
        once the ticks due are stepped and left nothing pending (what they asked comes first).
        Wakes the loop either way, once it waited, so that what arrives right behind goes to
        it."""
        if not self._idle or self._inbox or self._failed_now is not None:
            return False
        self._idle = False
        self._wakeup.set()
        self._advance_clock()
        return self._pending == EMPTY_READY

    def _process_now(self, ready: Ready) -> None:
        """`_process` without waiting: send, write the log inline, act. A failure is raised
        by the loop, as if it had met it."""
        try:
            early = self._begin(ready)
            if _writes(ready):
                self._write_log(ready)
            self._act(ready, sent=early)
        except Exception as exc:
            self._failed_now = exc

    def _takes(self, message: Message) -> bool:
        """Whether this member takes `message` now: not while its storage failed, nor one
        `refusal` names a reason for (with a WARNING once per cause)."""
        if self._failure is not None:
            return False
        reason = refusal(message, self.node_id, self._peers(), self.raft.term)
        if reason is not None:
            cause = reason.split(" ", 1)[0]
            self._warn_once(cause, "node %s: raft message dropped: %s", self.node_id, reason)
        return reason is None

    async def _loop(self) -> None:
        """Rounds until a storage call raises StorageFailure."""
        while True:
            self._idle = True
            await self._wakeup.wait()
            self._idle = False
            if self._failed_now is not None:
                failure, self._failed_now = self._failed_now, None
                raise failure
            self._wakeup = trio.Event()
            self._advance_clock()
            while self._inbox:
                message, image = self._inbox.popleft()
                ready = self.raft.step(message)
                if ready.install_snapshot is not None:
                    # Everything before it first; nothing after it may apply before the image.
                    await self._process_pending()
                    await self._process(ready, image)
                else:
                    self._pending = self._pending.merge(ready)
                    if image is not None:  # not needed: the log already holds its entries
                        self._stale_images.append(image)
            self._propose_queued()
            await self._snapshots.finish(self.raft)
            await self._process_pending()
            while self._stale_images:
                await self._io(self._stale_images.pop().unlink, True)

    def _submit(self, ready: Ready) -> None:
        self._pending = self._pending.merge(ready)
        self._wakeup.set()

    def _propose_queued(self) -> None:
        """Propose every command that arrived since the last round as one batch: however many
        callers wait, a round costs one log write and one AppendRequest per follower."""
        if not self._queued:
            return
        queued, self._queued = self._queued, []
        try:
            first, ready = self.raft.propose(*(data for data, _ in queued))
        except NotLeader as exc:
            for _, waiter in queued:
                waiter.finish(failure=exc)
            return
        for index, (_, waiter) in enumerate(queued, start=first):
            waiter.term = self.raft.term
            self._proposals[index] = waiter
        self._pending = self._pending.merge(ready)

    async def _process_pending(self) -> None:
        ready, self._pending = self._pending, EMPTY_READY
        await self._process(ready, None)

    def _warn_once(self, cause: str, text: str, *args: Any) -> None:
        """A WARNING the first time for `cause`, DEBUG after: a peer repeating a bad message
        must not flood the log."""
        level = logging.DEBUG if cause in self._warned else logging.WARNING
        self._warned.add(cause)
        log.log(level, text, *args)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        if self._blocking_io:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    async def _process(self, ready: Ready, image: Path | None) -> None:
        """Persist, send, install, apply, answer: in the order Raft's safety needs."""
        early = self._begin(ready)
        if _writes(ready):
            await self._save(ready)
        if ready.install_snapshot is not None and image is not None:
            await self._install(ready.install_snapshot, image)
        self._act(ready, sent=early)

    def _begin(self, ready: Ready) -> list[Message]:
        """What comes before the log write: the core's warnings, and the messages that may
        go out first (`_early_messages`), which are returned."""
        self._warn(ready)
        early = _early_messages(ready)
        for message in early:
            self.transport.send(message)
        return early

    def _warn(self, ready: Ready) -> None:
        for warning in ready.warnings:
            self._warn_once(warning, "%s", warning)

    def _act(self, ready: Ready, sent: Sequence[Message]) -> None:
        """What follows the log write: send the messages not `sent` before it, offer
        snapshots, apply, answer reads."""
        early = {id(message) for message in sent}
        for message in ready.messages:
            if id(message) not in early:
                self.transport.send(message)
        for follower in ready.send_snapshot:
            if not self._snapshots.offer(self.raft, follower):
                self._start_snapshot()
        self._unapplied.extend(ready.committed)
        if self._apply_due():
            self._apply()
        self._answer_reads(ready)
        self._check_leadership()
        self._snapshots.forget(self._was_leader, self.raft.match_index)
        if self._snapshots.due(self._applied, self.raft):
            self._start_snapshot()

    async def _save(self, ready: Ready) -> None:
        """Write the log inline, on the event loop: the write's end then wakes the loop
        itself, where a worker thread would wake first, then wake the loop, a second wait for
        a core on the path of every command. Only a leader whose last write was slow writes
        in a worker thread, so that the node's other tasks (block requests, leased reads,
        polls) go on meanwhile; its AppendRequests left before the write either way."""
        if self.raft.role == "leader" and self._slow_log:
            await self._io(self._write_log, ready)
        else:
            self._write_log(ready)

    def _write_log(self, ready: Ready) -> None:
        started = time.monotonic()
        self.storage.save(ready.hard_state, ready.truncate_from, ready.append)
        self._slow_log = time.monotonic() - started > SLOW_LOG_WRITE

    # -- applying ----------------------------------------------------------------------------

    def _apply_due(self) -> bool:
        """A leader applies at once: callers wait for the results. A follower applies once a
        tick, or once many entries wait: off the path of its acknowledgements, which the
        leader is waiting for, and in bigger (cheaper) batches."""
        if not self._unapplied:
            return False
        return (
            self._was_leader
            or self.raft.role == "leader"
            or self._ticks_done > self._applied_at_tick
            or len(self._unapplied) >= FOLLOWER_APPLY_BATCH
        )

    def _apply(self) -> None:
        committed, self._unapplied = self._unapplied, []
        self._applied_at_tick = self._ticks_done
        fresh = [entry for entry in committed if entry.index > self._applied]
        if not fresh:
            return
        # Inline: applying a batch to the unsynced database takes microseconds, less than a
        # worker-thread hop, and nothing else may touch the state machine meanwhile anyway.
        results = self.machine.apply(fresh)
        self._snapshots.logged(sum(len(entry.data) for entry in fresh))
        for entry, result in zip(fresh, results, strict=True):
            self._applied = entry.index
            waiter = self._proposals.pop(entry.index, None)
            if waiter is None:
                continue
            if waiter.term == entry.term:
                waiter.finish(result)
            else:
                # Ours was truncated from every log that matters: it can never be committed.
                waiter.finish(failure=NotLeader(self.raft.leader))
        self._release_reads()

    def _answer_reads(self, ready: Ready) -> None:
        for read_id, index in ready.reads:
            self._read_after.append((index, read_id))
        for read_id in ready.failed_reads:
            waiter = self._reads.pop(read_id, None)
            if waiter is not None:
                waiter.finish(failure=NotLeader(self.raft.leader))
        self._release_reads()

    def _release_reads(self) -> None:
        waiting = []
        for index, read_id in self._read_after:
            if index <= self._applied:
                waiter = self._reads.pop(read_id, None)
                if waiter is not None:
                    waiter.finish()
            else:
                waiting.append((index, read_id))
        self._read_after = waiting

    def _check_leadership(self) -> None:
        leading = self.raft.role == "leader"
        if self._was_leader and not leading:
            log.info("node %s is no longer the leader (term %d)", self.node_id, self.raft.term)
            self._fail_waiters(LeadershipLost(f"node {self.node_id} lost the leadership"))
        elif leading and not self._was_leader:
            log.info("node %s leads term %d", self.node_id, self.raft.term)
        self._was_leader = leading

    def _fail_waiters(self, failure: BaseException) -> None:
        """Fail every caller: proposals and reads with `failure`, and commands still queued
        with NotLeader, since no log holds them."""
        for _, waiter in self._queued:
            waiter.finish(failure=NotLeader(self.raft.leader))
        for waiter in [*self._proposals.values(), *self._reads.values()]:
            waiter.finish(failure=failure)
        self._queued.clear()
        self._proposals.clear()
        self._reads.clear()
        self._read_after.clear()

    # -- snapshots ---------------------------------------------------------------------------

    def _start_snapshot(self) -> None:
        assert self._nursery is not None
        self._snapshots.start(self._nursery, self._wakeup.set)

    async def _install(self, meta: SnapshotMeta, image: Path) -> None:
        """Replace the state machine by the image, durably, before the log is compacted to it
        (a crash in between leaves the log as it was: the leader offers the snapshot again)."""
        image_bytes = await self._io(os.path.getsize, image)
        await self._io(self.machine.restore, meta, image)
        await self._io(self.storage.compact, meta)
        if self.raft.last_index == meta.last_index:
            # The core dropped its whole log for the snapshot: so does the storage.
            await self._io(self.storage.save, None, meta.last_index + 1, ())
        self._applied = meta.last_index
        self._snapshots.installed(meta.last_index, image_bytes)
        self._unapplied = [entry for entry in self._unapplied if entry.index > meta.last_index]
        log.info("node %s: installed a snapshot at index %d", self.node_id, meta.last_index)

    # -- callers -----------------------------------------------------------------------------

    async def apply(self, data: bytes) -> Any:
        """Replicate a command and return the state machine's result for it.

        Raises NotLeader (with the leader it knows of) when the command was not proposed or
        can no longer be committed, LeadershipLost if leadership ended after it was proposed
        and before the outcome was known. Cancellation abandons the wait, not the command.
        """
        if self.raft.role != "leader" or self._failure is not None:
            raise NotLeader(None if self._failure else self.raft.leader)
        waiter = _Waiter(trio.Event())
        self._queued.append((data, waiter))
        if not self._slow_log and self._take_the_loops_turn():
            # Proposed, sent and written in this task: no pass of the scheduler before the
            # AppendRequests leave. A slow log's write is for the loop's worker thread.
            self._propose_queued()
            ready, self._pending = self._pending, EMPTY_READY
            self._process_now(ready)
        else:
            self._wakeup.set()
        await waiter.done.wait()
        if waiter.failure is not None:
            raise waiter.failure
        return waiter.result

    async def read(self, query: Callable[[StateMachine], T]) -> T:
        """Run `query` on state at least as new as any command committed before the call.

        ReadIndex: the leader confirms it still leads with a heartbeat round, then waits for
        its state machine to reach the commit index of the moment of the call. Raises
        NotLeader or LeadershipLost like `apply`.
        """
        if self._failure is not None:
            raise NotLeader(None)
        read_id = self._next_read
        self._next_read += 1
        self._advance_clock()  # the lease is judged by the time now, not at the last wake-up
        ready = self.raft.read_index(read_id)
        confirmed = ready.reads == ((read_id, ready.reads[0][1]),) if ready.reads else False
        if confirmed and ready == Ready(reads=ready.reads) and ready.reads[0][1] <= self._applied:
            # Confirmed at once (the lease), at an index already applied: no round of the loop.
            return query(self.machine)
        waiter = self._reads[read_id] = _Waiter(trio.Event())
        self._submit(ready)
        await waiter.done.wait()
        if waiter.failure is not None:
            raise waiter.failure
        # Inline, like `apply`: one indexed SQLite read costs less than a thread hop.
        return query(self.machine)

    def set_learners(self, learners: Sequence[str]) -> None:
        """Have the leader replicate to `learners` too (see `Raft.set_learners`).

        Raises NotLeader on other roles and while the storage failed."""
        self._require_working()
        self._submit(self.raft.set_learners(learners))

    def propose_config(self, voters: tuple[str, ...]) -> int:
        """Propose the configuration `voters` (one voter more or fewer); returns the index of
        its entry, committed once `raft.commit_index` reaches it. Raises what
        `Raft.propose_config` raises, and NotLeader while the storage failed."""
        self._require_working()
        index, ready = self.raft.propose_config(voters)
        self._submit(ready)
        return index

    def _require_working(self) -> None:
        if self._failure is not None:
            raise NotLeader(None)

    def status(self) -> dict[str, Any]:
        """The core's view, what is applied, and why the member stopped, if it did."""
        status = dict(self.raft.status())
        status.update(
            node_id=self.node_id,
            applied_index=self._applied,
            snapshot_index=self._snapshots.index,
            failure=self._failure,
        )
        if self._failure is not None:
            status.update(role="stopped", leader=None)
        return status


#: Messages `RaftNode._step_now` may step in the receiving task: replication's requests and
#: answers, on the path of every command.
_STEPPED_NOW = (AppendRequest, AppendResponse)


def _writes(ready: Ready) -> bool:
    """Whether acting on `ready` starts with a write to the log."""
    return ready.hard_state is not None or ready.truncate_from is not None or bool(ready.append)


def _early_messages(ready: Ready) -> list[Message]:
    """A leader's AppendRequests may go out while its own log is being written (thesis
    §10.2.1): the answers are stepped only after the write completed, so the leader never
    counts itself for an entry not yet on its disk. Nothing else may precede the write, and
    nothing at all when the term or vote changed."""
    if ready.hard_state is not None:
        return []
    return [m for m in ready.messages if isinstance(m, AppendRequest)]
