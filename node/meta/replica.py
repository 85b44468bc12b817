"""The metadata, replicated: the state machine Raft drives, and the service nodes answer with.

`MetaMachine` adapts `MetaState` to the Raft shell: committed entries become one
`apply_batch` (one SQLite transaction) that also records the applied index, so a restarted
node resumes exactly where its database is. `ReplicatedMeta` is what a member of the meta
group serves: it stamps each command with the time (decided before the command enters the
log), proposes it, and answers with the outcome once it is committed and applied; queries
are linearizable reads (ReadIndex) on the leader.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import random
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import msgpack
import trio

from ringfs.node.durable import fsync_dir
from ringfs.node.errors import IN_DOUBT, NOT_LEADER, NodeError, StorageFailure
from ringfs.node.meta.commands import Command, Entry, Init, Outcome, Query, encode_result
from ringfs.node.meta.state import MetaState
from ringfs.node.raft.core import Entry as LogEntry
from ringfs.node.raft.core import EntryKind, NotLeader, SnapshotMeta
from ringfs.node.raft.shell import LeadershipLost, RaftNode, StateMachine, Transport
from ringfs.node.raft.storage import RaftLog

log = logging.getLogger(__name__)

# Seconds between checks that the filesystem exists, until this node made sure it does.
INIT_POLL = 0.2


def stamp(command: Command, now_ns: int) -> Command:
    """Fill in the decision the state machine must not make itself: the current time."""
    if any(f.name == "now_ns" for f in dataclasses.fields(command)):
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


class MetaMachine:
    """`StateMachine` over the metadata database: batches are applied on the event loop (no
    fsync: the Raft log is the durable copy), snapshots taken and restored in worker threads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # Not fsync'd per batch: the Raft log holds the commands durably and replays them.
        self.state = MetaState(path, synchronous=False)
        self.batches = 0
        self.commands = 0

    def apply(self, entries: Sequence[LogEntry]) -> list[Any]:
        commands = [
            Entry.from_wire(msgpack.unpackb(e.data, raw=False))
            for e in entries
            if e.kind is EntryKind.COMMAND
        ]
        # One transaction with the applied index. A bug in a command answers EIO for that
        # command alone, inside it; whatever escapes is this node's own failure (its disk,
        # its memory), so it stops rather than differ from its peers (the log replays).
        try:
            results = self.state.apply_batch(commands, last_index=entries[-1].index)
        except Exception as exc:
            raise StorageFailure(f"metadata database {self.path}: {exc}") from exc
        outcomes = iter(results)
        self.batches += 1
        self.commands += len(commands)
        return [next(outcomes) if e.kind is EntryKind.COMMAND else None for e in entries]

    def applied_index(self) -> int:
        return self.state.applied_index

    def snapshot(self) -> tuple[int, bytes]:
        """The image at the applied index, made durable here first: the Raft log up to it is
        compacted away next, and must not be needed to replay anything after a power loss."""
        image = self.path.with_suffix(".snapshot")
        image.unlink(missing_ok=True)
        self.state.checkpoint()
        index = self.state.applied_index
        self.state.snapshot_to(image)
        try:
            return index, image.read_bytes()
        finally:
            image.unlink(missing_ok=True)

    def restore(self, meta: SnapshotMeta, image: bytes) -> None:
        incoming = self.path.with_suffix(".incoming")
        incoming.write_bytes(image)
        with open(incoming, "rb+") as file:
            os.fsync(file.fileno())
        if not is_whole_database(incoming):
            incoming.unlink()
            # The core has dropped its log for this snapshot: stop, and restart from disk.
            raise StorageFailure(f"snapshot image at index {meta.last_index} is damaged")
        self.state.close()
        for suffix in ("-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        os.replace(incoming, self.path)
        fsync_dir(self.path.parent)  # the log is compacted next: the new file must stay
        self.state = MetaState(self.path, synchronous=False)
        if self.state.applied_index != meta.last_index:
            raise RuntimeError(
                f"snapshot image is at index {self.state.applied_index}, not {meta.last_index}"
            )

    def stats(self) -> dict[str, Any]:
        per_batch = self.commands / self.batches if self.batches else 0.0
        return {"batches": self.batches, "commands": self.commands, "commands_per_batch": per_batch}


class ReplicatedMeta:
    """The metadata service of a meta-group member."""

    def __init__(
        self,
        node_id: str,
        voters: tuple[str, ...],
        data_dir: Path,
        transport: Transport,
        chunk_size: int,
        snapshot_threshold: int,
    ) -> None:
        self.machine = MetaMachine(data_dir / "meta.db")
        self.storage = RaftLog(data_dir / "raft.db")
        self.raft = RaftNode(
            node_id,
            voters,
            self.storage,
            self.machine,
            transport,
            rng=random.Random(),
            snapshot_threshold=snapshot_threshold,
        )
        self.chunk_size = chunk_size

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the Raft member until cancelled; the filesystem is created by the first leader."""
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.raft.run)
                nursery.start_soon(self._ensure_initialized, name="meta-init")
                task_status.started()
        finally:
            self.storage.close()
            self.machine.state.close()

    async def _ensure_initialized(self) -> None:
        """Create the root directory once, through the log (Init is idempotent)."""
        while True:
            if self.raft.raft.role == "leader":
                try:
                    init = Init(self.chunk_size, os.getuid(), os.getgid(), 0)
                    outcome = await self.apply(init, None, None, None)
                except NodeError:
                    outcome = None
                if outcome is not None:
                    if outcome.error is not None:
                        log.error("cannot create the filesystem: %s", outcome.error)
                    return
            await trio.sleep(INIT_POLL)

    async def apply(
        self, command: Command, client_id: bytes | None, seq: int | None, acked_below: int | None
    ) -> Outcome:
        """Replicate a command and return its outcome.

        Raises NodeError(NOT_LEADER, leader) when this node did not propose it (or another
        leader's entry took its place: it will never be applied), NodeError(IN_DOUBT, leader)
        when it lost the lead after proposing it (a retry with the same client id and seq
        tells whether it was applied).
        """
        entry = Entry(stamp(command, time.time_ns()), client_id, seq, acked_below)
        data = msgpack.packb(entry.to_wire(), use_bin_type=True)
        try:
            outcome: Outcome = await self.raft.apply(data)
        except NotLeader as exc:
            raise NodeError(NOT_LEADER, exc.leader or "") from None
        except LeadershipLost as exc:
            raise NodeError(IN_DOUBT, self.raft.raft.leader or "") from exc
        return outcome

    async def query(self, query: Query) -> Any:
        """Answer a read-only query linearizably (on the leader, after ReadIndex)."""

        def run(machine: StateMachine) -> Any:
            assert isinstance(machine, MetaMachine)
            return encode_result(machine.state.query(query))

        try:
            return await self.raft.read(run)
        except NotLeader as exc:
            raise NodeError(NOT_LEADER, exc.leader or "") from None
        except LeadershipLost:
            raise NodeError(NOT_LEADER, self.raft.raft.leader or "") from None

    def stats(self) -> dict[str, Any]:
        return {**self.machine.stats(), **self.raft.status()}
