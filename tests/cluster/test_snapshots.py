"""A meta-group member that was away catches up from a snapshot sent in many parts."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.meta.commands import ROOT_INO, Mkdir
from ringfs.node.raft import images
from ringfs.node.service import NodeService
from tests.cluster.conftest import LocalNodes, start_nodes

DEADLINE = 30.0
PART = 4096
DIRECTORIES = 300


async def members(cluster: Cluster) -> dict[str, dict[str, Any]]:
    return {info.node_id: s for info, s in await cluster.meta_status() if s is not None}


async def leader_of(cluster: Cluster) -> str:
    while True:
        leaders = [n for n, s in (await members(cluster)).items() if s["role"] == "leader"]
        if len(leaders) == 1:
            return leaders[0]
        await trio.sleep(0.05)


def directories_in(meta_db: Path) -> int:
    with sqlite3.connect(f"file:{meta_db}?mode=ro", uri=True) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM dentries WHERE parent = ?", (ROOT_INO,))
        return int(count[0])


async def test_a_member_that_was_away_catches_up_from_a_snapshot_in_parts(
    tmp_path: Path,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    expected_logs: list[str],
) -> None:
    expected_logs.append("unavailable")  # the client meets the stopped member
    caplog.set_level(logging.INFO, logger="ringfs.node.raft.shell")
    monkeypatch.setattr(images, "SNAPSHOT_PART", PART)
    parts: list[int] = []
    receive = NodeService.raft_snapshot_part

    async def counting(self: NodeService, params: list[Any]) -> None:
        parts.append(params[4])  # the offset
        await receive(self, params)

    monkeypatch.setattr(NodeService, "raft_snapshot_part", counting)
    nodes: LocalNodes = await start_nodes(tmp_path, nursery, snapshot_threshold=50)
    with trio.fail_after(DEADLINE):
        cluster = await nodes.client()
        await wait_for_filesystem(cluster)
        leader = await leader_of(cluster)
        away = next(name for name in nodes.configs if name != leader)
        await nodes.stop(away)
        for i in range(DIRECTORIES):
            await cluster.meta_apply(Mkdir(ROOT_INO, b"d%03d-" % i + b"x" * 150, 0o755, 0, 0, 0))
        await nodes.start(away)
        while True:
            status = await members(cluster)
            if away in status and status[away]["applied_index"] >= status[leader]["commit_index"]:
                break
            await trio.sleep(0.05)
        # Its database file shows them once committed (within `COMMIT_INTERVAL`).
        while True:
            if directories_in(nodes.configs[away].data_dir / "meta.db") == DIRECTORIES:
                break
            await trio.sleep(0.05)
    assert f"node {away}: installed a snapshot" in caplog.text
    first_transfer = parts[: parts.index(0, 1)] if parts.count(0) > 1 else parts
    assert len(first_transfer) > 10  # the image went in many parts, in order
    assert first_transfer == [PART * n for n in range(len(first_transfer))]
