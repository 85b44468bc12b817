"""A meta-group member whose Raft log cannot be written stops taking part, not serving.

In-process nodes. One follower's Raft log fails as a full disk does ("No space left on
device"): the node keeps running and serving blocks and `meta.status` (role `stopped`), the other
two keep committing, and once the log can be written again the member reopens its storage by
itself and catches up.
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
from ringfs.node.meta.commands import ROOT_INO, Mkdir
from ringfs.node.raft.core import Entry, HardState
from ringfs.node.raft.storage import RaftLog
from tests.cluster.conftest import start_nodes
from tests.cluster.test_snapshots import leader_of, members

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
