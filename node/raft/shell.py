"""The trio shell around the Raft core: time, persistence, messages, applying, waiting.

`RaftNode` owns one `Raft` core. Its loop turns ticks and received messages into core calls
and processes what they return in the order Raft requires: persist (term, vote, entries:
one fsync for everything gathered since the last round, which is the group commit), then
send, then apply committed entries to the state machine, then answer reads. Callers
`apply` commands and `read` state; both wait for the outcome. The storage, the state machine
and the transport are interfaces, so the same shell runs in a node process and in the
deterministic simulation.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import trio

from ringfs.node.raft.core import (
    AppendRequest,
    Entry,
    HardState,
    Message,
    NotLeader,
    Raft,
    Ready,
    SnapshotMeta,
    SnapshotRequest,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# A follower applies committed entries on each tick, or sooner once this many wait.
FOLLOWER_APPLY_BATCH = 256

__all__ = ["LeadershipLost", "NotLeader", "RaftNode"]


class LeadershipLost(Exception):
    """This node stopped leading after it proposed the command and before the outcome was
    known: a later leader may still commit it. A retry with the same client id and seq tells
    (it is applied at most once). A command that was never proposed, or whose place in the log
    another leader's entry took, fails with NotLeader instead: it will never be applied."""


class RaftStorage(Protocol):
    """Durable Raft state: whatever `save` or `compact` got survives a crash."""

    def load(self) -> tuple[HardState, SnapshotMeta | None, list[Entry]]: ...

    def save(
        self, hard_state: HardState | None, truncate_from: int | None, append: Sequence[Entry]
    ) -> None: ...

    def compact(self, meta: SnapshotMeta) -> None: ...


class StateMachine(Protocol):
    """What Raft replicates. Durable: `apply` records the applied index with its effects.

    `apply` and read queries run on the event loop and must be quick (no fsync); `snapshot`
    and `restore` run in a worker thread.
    """

    def apply(self, entries: Sequence[Entry]) -> list[Any]:
        """Apply committed entries in order (NOOP and CONFIG ones only advance the applied
        index); one result per entry."""
        ...

    def applied_index(self) -> int: ...

    def snapshot(self) -> tuple[int, bytes]:
        """(applied index, a consistent image of the state at that index)."""
        ...

    def restore(self, meta: SnapshotMeta, image: bytes) -> None: ...


class Transport(Protocol):
    def send(self, message: Message, snapshot: bytes | None = None) -> None:
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
        blocking_io: bool = True,
    ) -> None:
        """`blocking_io=False` runs storage and state machine calls inline (the simulation,
        whose fakes never block: worker threads would break its deterministic clock)."""
        hard_state, snapshot, entries = storage.load()
        self.raft = Raft(
            node_id, voters, hard_state=hard_state, snapshot=snapshot, entries=entries, rng=rng
        )
        self.node_id = node_id
        self.storage = storage
        self.machine = machine
        self.transport = transport
        self.tick_interval = tick_interval
        self.snapshot_threshold = snapshot_threshold
        self._blocking_io = blocking_io
        self._pending = Ready()
        self._inbox: deque[tuple[Message, bytes | None]] = deque()
        # Ticks are counted from the clock, not from wake-ups, so a stall is not time that
        # never passed (the leader lease relies on it).
        self._clock_start: float | None = None
        self._ticks_done = 0
        # Committed entries a follower has yet to apply, and the tick it last applied at.
        self._unapplied: list[Entry] = []
        self._applied_at_tick = 0
        self._wakeup = trio.Event()
        # Commands waiting for the loop to propose them together (one AppendRequest each).
        self._queued: list[tuple[bytes, _Waiter]] = []
        self._proposals: dict[int, _Waiter] = {}
        self._reads: dict[int, _Waiter] = {}
        self._read_after: list[tuple[int, int]] = []
        self._next_read = 1
        self._applied = machine.applied_index()
        # The snapshot image this leader last offered, offered again (not taken again) while
        # it is the newest and a follower still needs it.
        self._offered: tuple[SnapshotMeta, bytes] | None = None
        self._snapshot_index = snapshot.last_index if snapshot else 0
        self._was_leader = False

    # -- running -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Tick and process until cancelled. Cancellation fails every waiting caller."""
        self._clock_start = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._ticker, name=f"raft-ticker {self.node_id}")
                task_status.started()
                await self._loop()
        finally:
            self._fail_waiters(LeadershipLost(f"node {self.node_id} stopped"))

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick_interval)
            self._wakeup.set()

    def _advance_clock(self) -> None:
        """Give the core every tick that is due by now (several after a stall)."""
        if self._clock_start is None:
            return
        due = int((trio.current_time() - self._clock_start) / self.tick_interval)
        while self._ticks_done < due:
            self._ticks_done += 1
            self._pending = self._pending.merge(self.raft.tick())

    def deliver(self, message: Message, snapshot: bytes | None = None) -> None:
        """Queue a message that arrived (called by the transport; never blocks)."""
        if isinstance(message, SnapshotRequest) and snapshot is None:
            log.warning("node %s: snapshot from %s came without its image", self.node_id,
                        message.src)  # fmt: skip
            return
        if isinstance(message, SnapshotRequest):
            # An image can be large, and a newer one makes one still waiting pointless.
            self._inbox = deque(m for m in self._inbox if not isinstance(m[0], SnapshotRequest))
        self._inbox.append((message, snapshot))
        self._wakeup.set()

    async def _loop(self) -> None:
        while True:
            await self._wakeup.wait()
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
            self._propose_queued()
            await self._process_pending()

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
        ready, self._pending = self._pending, Ready()
        await self._process(ready, None)

    async def _io(self, fn: Callable[..., T], *args: Any) -> T:
        if self._blocking_io:
            return await trio.to_thread.run_sync(fn, *args)
        return fn(*args)

    async def _process(self, ready: Ready, image: bytes | None) -> None:
        """Persist, send, install, apply, answer: in the order Raft's safety needs."""
        early = _early_messages(ready)
        for message in early:
            self.transport.send(message)
        if ready.hard_state is not None or ready.truncate_from is not None or ready.append:
            await self._io(self.storage.save, ready.hard_state, ready.truncate_from, ready.append)
        if ready.install_snapshot is not None and image is not None:
            await self._install(ready.install_snapshot, image)
        sent = {id(message) for message in early}
        for message in ready.messages:
            if id(message) not in sent:
                self.transport.send(message)
        for follower in ready.send_snapshot:
            await self._send_snapshot(follower)
        self._unapplied.extend(ready.committed)
        if self._apply_due():
            await self._apply()
        self._answer_reads(ready)
        self._check_leadership()
        self._forget_offered()
        if self._snapshot_due():
            await self._take_snapshot()

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

    async def _apply(self) -> None:
        committed, self._unapplied = self._unapplied, []
        self._applied_at_tick = self._ticks_done
        fresh = [entry for entry in committed if entry.index > self._applied]
        if not fresh:
            return
        # Inline: applying a batch to the unsynced database takes microseconds, less than a
        # worker-thread hop, and nothing else may touch the state machine meanwhile anyway.
        results = self.machine.apply(fresh)
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

    def _forget_offered(self) -> None:
        """Drop the offered image once no follower can need it (or this node stopped leading)."""
        if self._offered is None:
            return
        needed = self._offered[0].last_index
        if not self._was_leader or all(m >= needed for m in self.raft.match_index.values()):
            self._offered = None

    def _snapshot_due(self) -> bool:
        """Enough applied since the last snapshot; but not while a snapshot this node received
        is about to replace the state machine (the core already dropped the log for it)."""
        received = self.raft.snapshot
        if received is not None and received.last_index > self._applied:
            return False
        return self._applied - self._snapshot_index >= self.snapshot_threshold

    async def _take_snapshot(self) -> tuple[SnapshotMeta, bytes] | None:
        """Snapshot the state machine at its applied index and compact the log up to it.

        None when the log does not hold that index (a crash in the middle of installing a
        snapshot left the state machine ahead of the log): the log catches up and the next
        snapshot succeeds.
        """
        index, image = await self._io(self.machine.snapshot)
        try:
            meta = self.raft.snapshot_meta(index)
        except ValueError:
            log.warning("node %s: no snapshot at %d until the log holds it", self.node_id, index)
            self._snapshot_index = index
            return None
        self.raft.compact(meta)
        await self._io(self.storage.compact, meta)
        self._snapshot_index = index
        log.info("node %s: snapshot at index %d, log compacted", self.node_id, index)
        return meta, image

    async def _send_snapshot(self, follower: str) -> None:
        """Offer `follower` the newest snapshot, taking one only if none was offered since the
        last compaction: the core re-offers every few ticks while an answer is due, and a large
        image may take longer than that to arrive."""
        offered = self._offered
        if offered is None or offered[0].last_index != self._snapshot_index:
            offered = await self._take_snapshot()
            if offered is None:
                return
            self._offered = offered
        meta, image = offered
        log.info("node %s: sending the snapshot at %d to %s", self.node_id, meta.last_index,
                 follower)  # fmt: skip
        self.transport.send(SnapshotRequest(self.node_id, follower, self.raft.term, meta), image)

    async def _install(self, meta: SnapshotMeta, image: bytes) -> None:
        await self._io(self.machine.restore, meta, image)
        await self._io(self.storage.compact, meta)
        if self.raft.last_index == meta.last_index:
            # The core dropped its whole log for the snapshot: so does the storage.
            await self._io(self.storage.save, None, meta.last_index + 1, ())
        self._applied = meta.last_index
        self._snapshot_index = meta.last_index
        self._unapplied = [entry for entry in self._unapplied if entry.index > meta.last_index]
        log.info("node %s: installed a snapshot at index %d", self.node_id, meta.last_index)

    # -- callers -----------------------------------------------------------------------------

    async def apply(self, data: bytes) -> Any:
        """Replicate a command and return the state machine's result for it.

        Raises NotLeader (with the leader it knows of) when the command was not proposed or
        can no longer be committed, LeadershipLost if leadership ended after it was proposed
        and before the outcome was known. Cancellation abandons the wait, not the command.
        """
        if self.raft.role != "leader":
            raise NotLeader(self.raft.leader)
        waiter = _Waiter(trio.Event())
        self._queued.append((data, waiter))
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
        read_id = self._next_read
        self._next_read += 1
        self._advance_clock()  # the lease is judged by the time now, not at the last wake-up
        waiter = self._reads[read_id] = _Waiter(trio.Event())
        self._submit(self.raft.read_index(read_id))
        await waiter.done.wait()
        if waiter.failure is not None:
            raise waiter.failure
        # Inline, like `apply`: one indexed SQLite read costs less than a thread hop.
        return query(self.machine)

    def status(self) -> dict[str, Any]:
        status = dict(self.raft.status())
        status.update(
            node_id=self.node_id, applied_index=self._applied, snapshot_index=self._snapshot_index
        )
        return status


def _early_messages(ready: Ready) -> list[Message]:
    """A leader's AppendRequests may go out while its own log is being written (thesis
    §10.2.1): the answers are stepped only after the write completed, so the leader never
    counts itself for an entry not yet on its disk. Nothing else may precede the write, and
    nothing at all when the term or vote changed."""
    if ready.hard_state is not None:
        return []
    return [m for m in ready.messages if isinstance(m, AppendRequest)]
