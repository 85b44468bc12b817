"""The metadata service of a node: stamps commands, commits them in groups, answers queries.

Commands that arrive together are applied as one batch: one SQLite transaction, one fsync
(group commit). Anything that is not a pure function of the state and the command -- the
time -- is decided here, before the command is applied, and carried in it, so the state
machine stays deterministic and can be replicated by log shipping without changes.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, cast

import trio

from ringfs.node.commands import Command, Entry, Outcome, Query
from ringfs.node.meta import MetaState

log = logging.getLogger(__name__)

# Commands queued beyond this make new callers wait: bounds memory under a flood of requests.
MAX_QUEUED = 4096


def stamp(command: Command, now_ns: int) -> Command:
    """Fill in the decision the state machine must not make itself: the current time."""
    if any(f.name == "now_ns" for f in dataclasses.fields(command)):
        stamped: Command = dataclasses.replace(cast(Any, command), now_ns=now_ns)
        return stamped
    return command


class _Pending:
    __slots__ = ("entry", "done", "outcome")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.done = trio.Event()
        self.outcome: Outcome | None = None


class MetaService:
    """Serialises access to one `MetaState`; all SQLite work runs in a worker thread."""

    def __init__(self, state: MetaState) -> None:
        self.state = state
        self._send, self._receive = trio.open_memory_channel[_Pending](MAX_QUEUED)
        self._db_lock = trio.Lock()
        self.batches = 0
        self.commands = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Commit queued commands in batches until cancelled."""
        task_status.started()
        async with self._receive:
            while True:
                batch = [await self._receive.receive()]
                while True:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._commit(batch)

    async def _commit(self, batch: list[_Pending]) -> None:
        entries = [pending.entry for pending in batch]
        async with self._db_lock:
            try:
                outcomes = await trio.to_thread.run_sync(self.state.apply_batch, entries)
            except Exception:
                # A bug in the state machine: the batch was rolled back whole. Apply the
                # commands one by one, so only the one at fault answers EIO and the node
                # keeps serving.
                log.exception("metadata batch of %d commands failed", len(batch))
                outcomes = [await trio.to_thread.run_sync(self._apply_alone, e) for e in entries]
        self.batches += 1
        self.commands += len(batch)
        log.debug("committed %d metadata commands in one batch", len(batch))
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.outcome = outcome
            pending.done.set()

    def _apply_alone(self, entry: Entry) -> Outcome:
        try:
            return self.state.apply_batch([entry])[0]
        except Exception:
            log.exception("metadata command %s failed", entry.command.OP)
            return Outcome(None, "EIO")

    async def apply(
        self, command: Command, client_id: bytes | None, seq: int | None, acked_below: int | None
    ) -> Outcome:
        """Queue a command for the next group commit and wait for its outcome.

        Cancellation while waiting does not withdraw the command: it is applied anyway, and a
        retry with the same (client id, seq) gets the stored outcome.
        """
        entry = Entry(stamp(command, time.time_ns()), client_id, seq, acked_below)
        pending = _Pending(entry)
        await self._send.send(pending)
        await pending.done.wait()
        assert pending.outcome is not None
        return pending.outcome

    async def query(self, query: Query) -> Any:
        """Answer a read-only query from the committed state."""
        async with self._db_lock:
            return await trio.to_thread.run_sync(self.state.query, query)

    def stats(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "commands": self.commands,
            "commands_per_batch": self.commands / self.batches if self.batches else 0.0,
        }
