"""Where a leader writes its log: on the event loop while its writes are fast, in a worker
thread after a slow one, so that a slow disk does not hold up the node's other tasks."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import trio

from ringfs.node.raft.core import Entry, HardState
from ringfs.node.raft.shell import SLOW_LOG_WRITE, RaftNode
from tests.sim.durable import MemoryStorage
from tests.sim.test_raftnode import Recorder


class TimedStorage(MemoryStorage):
    """Notes whether each write of entries ran on the event loop's thread; `slow_next`
    makes the next one take longer than `SLOW_LOG_WRITE`."""

    def __init__(self) -> None:
        super().__init__()
        self.on_loop: list[bool] = []
        self.slow_next = False

    def save(
        self, hard_state: HardState | None, truncate_from: int | None, append: Sequence[Entry]
    ) -> None:
        super().save(hard_state, truncate_from, append)
        if append:
            self.on_loop.append(threading.current_thread() is threading.main_thread())
        if self.slow_next:
            self.slow_next = False
            time.sleep(SLOW_LOG_WRITE * 5)


async def test_a_leader_writes_in_a_worker_thread_only_after_a_slow_write(
    tmp_path: Path,
) -> None:
    storage = TimedStorage()
    recorder = Recorder(tmp_path)
    node = RaftNode(
        "n1", ("n1",), storage, recorder, recorder, rng=random.Random(1), tick_interval=0.01
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        with trio.fail_after(10):
            while node.raft.role != "leader":  # noqa: ASYNC110 - no event signals it
                await trio.sleep(0.01)
            # A write may be slow by chance on a busy machine: a few, and one is enough.
            for _ in range(5):
                await node.apply(b"fast")
            fast = storage.on_loop[:]
            storage.slow_next = True
            await node.apply(b"slow")
            await node.apply(b"after the slow one")
            after_slow = storage.on_loop[-1]
            for _ in range(5):
                await node.apply(b"fast again")
        nursery.cancel_scope.cancel()
    assert True in fast
    assert after_slow is False
    assert True in storage.on_loop[-5:]
    assert recorder.applied[-12:] == sorted(storage.log)[-12:]  # every command committed
