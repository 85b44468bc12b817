"""A meta-group member whose storage fails stops taking part, not serving.

In-process nodes. One follower's Raft log fails as a full disk does ("No space left on
device"): the node keeps running and serving blocks and `meta.status` (role `stopped`), the other
two keep committing, and once the log can be written again the member reopens its storage by
itself and catches up. A leader whose metadata database fails to commit in the background
stops leading at once, and gets back what it lost from its log.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.errors import StorageFailure
from ringfs.node.meta.commands import ROOT_INO, Lookup, Mkdir
from ringfs.node.meta.replica import MetaMachine
from ringfs.node.meta.state import MetaState
from ringfs.node.raft.core import Entry, HardState
from ringfs.node.raft.storage import RaftLog
from tests.cluster.conftest import start_nodes
from tests.cluster.test_snapshots import directories_in, leader_of, members

DEADLINE = 60.0


async def test_a_member_whose_raft_log_is_full_stops_taking_part_not_serving(
    tmp_path: Path,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    expected_logs: list[str],
) -> None:
    expected_logs += ["storage failed", "unavailable", "restarted without"]
    full: set[Path] = set()
    save = RaftLog.save

    def saving(
        self: RaftLog,
        hard_state: HardState | None,
        truncate_from: int | None,
        append: Sequence[Entry],
    ) -> None:
        if Path(self._path).parent in full:
            raise StorageFailure(f"raft log {self._path}: [Errno 28] No space left on device")
        save(self, hard_state, truncate_from, append)

    monkeypatch.setattr(RaftLog, "save", saving)
    nodes = await start_nodes(tmp_path, nursery, snapshot_threshold=20)
    with trio.fail_after(DEADLINE):
        cluster = await nodes.client()
        await wait_for_filesystem(cluster)
        leader = await leader_of(cluster)
        member = next(name for name in nodes.configs if name != leader)
        full.add(nodes.configs[member].data_dir)
        for i in range(40):
            await cluster.meta_apply(Mkdir(ROOT_INO, b"d%d" % i, 0o755, 0, 0, 0))
        stopped = (await members(cluster))[member]
        assert stopped["role"] == "stopped"
        assert "No space left on device" in stopped["failure"]
        # It still serves blocks.
        address = nodes.map.node(member).address
        data = os.urandom(1000)
        block_id = os.urandom(16)
        await cluster.pool.call(
            address, "block.put", [block_id, hashlib.sha256(data).digest(), data]
        )
        got: list[Any] = await cluster.pool.call(address, "block.get", [block_id])
        assert got[0] == data
        full.clear()  # space is back
        while True:
            status = await members(cluster)
            mine, theirs = status.get(member), status.get(leader)
            back = mine is not None and theirs is not None and mine["failure"] is None
            if back and mine["applied_index"] >= theirs["commit_index"]:
                break
            await trio.sleep(0.1)
        await cluster.meta_apply(Mkdir(ROOT_INO, b"after", 0o755, 0, 0, 0))


async def test_a_leader_whose_database_fails_to_commit_in_the_background_stops_at_once(
    tmp_path: Path,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    expected_logs: list[str],
) -> None:
    """Applied batches are committed to meta.db a moment later, by a periodic task. When that
    commit fails, the database is closed: the leader must stop at once, not answer queries
    from a closed database until the next command stops it."""
    expected_logs += ["storage failed"]
    failing: list[Path] = []
    doomed: set[int] = set()
    commit_due, commit = MetaMachine.commit_due, MetaState.commit

    def due(self: MetaMachine) -> None:
        if failing and self.path.is_relative_to(failing[0]):
            doomed.add(id(self.state))
        commit_due(self)

    def committing(self: MetaState) -> None:
        if id(self) in doomed and self._db.in_transaction:
            failing.clear()
            doomed.clear()
            self._db.set_progress_handler(lambda: 1, 1)  # COMMIT fails: "interrupted"
        commit(self)

    monkeypatch.setattr(MetaMachine, "commit_due", due)
    monkeypatch.setattr(MetaState, "commit", committing)
    nodes = await start_nodes(tmp_path, nursery)
    with trio.fail_after(DEADLINE):
        cluster = await nodes.client()
        await wait_for_filesystem(cluster)
        leader = await leader_of(cluster)
        for i in range(5):
            await cluster.meta_apply(Mkdir(ROOT_INO, b"d%d" % i, 0o755, 0, 0, 0))
        failing.append(nodes.configs[leader].data_dir)
        with trio.fail_after(5):  # no command comes to stop it: the failed commit does
            while True:
                status = (await members(cluster)).get(leader, {})
                if status.get("role") == "stopped":
                    break
                await trio.sleep(0.05)
        assert "interrupted" in status["failure"]
        for i in range(5):  # answered by the new leader
            await cluster.meta_query(Lookup(ROOT_INO, b"d%d" % i))
        await cluster.meta_apply(Mkdir(ROOT_INO, b"after", 0o755, 0, 0, 0))
        while True:
            status = await members(cluster)
            mine = status.get(leader)
            theirs = [s for n, s in status.items() if s["role"] == "leader"]
            back = mine is not None and mine["failure"] is None and len(theirs) == 1
            if back and mine["applied_index"] >= theirs[0]["commit_index"]:
                break
            await trio.sleep(0.1)
        # What the failed commit lost is applied again from the log (and committed soon).
        while True:
            if directories_in(nodes.configs[leader].data_dir / "meta.db") == 6:
                break
            await trio.sleep(0.05)
