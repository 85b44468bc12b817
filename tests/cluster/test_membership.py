"""Members come and go on in-process nodes: a new node joins and fills up, a drained one leaves
and stops, a dead one is removed or marked out (and joins again when back), a new one replaces
an old one. Each time the blocks end on exactly the new placement and every one reads back."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from ringfs.fs import cluster as cluster_module
from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node import agreement, lifecycle
from ringfs.node.blocks.repair import RepairConfig
from ringfs.node.cluster.map import ClusterMap
from ringfs.node.meta.commands import Chunk
from tests.cluster.conftest import LocalNodes, start_nodes
from tests.cluster.test_collector import holders
from tests.cluster.test_repair import wait_until, write_files

FAST_REPAIR = RepairConfig(interval=1.0, retry=1.0)


async def cluster_with_files(
    tmp_path: Path,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    out_after: float = 600.0,
) -> tuple[LocalNodes, Cluster, list[Chunk]]:
    """`count` nodes that follow the map, move and repair within a second or so, a client that
    follows it too, and 40 one-block files in place."""
    monkeypatch.setattr(agreement, "FOLLOW_INTERVAL", 0.2)
    monkeypatch.setattr(lifecycle, "INTERVAL", 0.2)
    monkeypatch.setattr(cluster_module, "MAP_FOLLOW_INTERVAL", 0.2)
    nodes = await start_nodes(tmp_path, nursery, count, repair=FAST_REPAIR, out_after=out_after)
    client = await nodes.client()
    await wait_for_filesystem(client)
    nursery.start_soon(client.follow_map)
    chunks = await write_files(client, 40)
    await wait_until(lambda: placed_on(nodes, chunks, nodes.map))
    return nodes, client, chunks


async def placed_on(nodes: LocalNodes, chunks: list[Chunk], cmap: ClusterMap) -> bool:
    """Whether every block is held by exactly the nodes `cmap` places it on (stopped nodes
    do not count)."""
    running = set(nodes.scopes)
    return all(
        holders(nodes, c.block_id) & running
        == {n.node_id for n in cmap.placement(c.block_id)} & running
        for c in chunks
    )


def map_where(
    client: Cluster, condition: Callable[[ClusterMap], bool]
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition(await client.refresh_map())

    return check


async def all_read_back(client: Cluster, chunks: list[Chunk]) -> None:
    for chunk in chunks:
        assert len(await client.get_block(chunk.block_id, chunk.checksum)) == chunk.length


async def test_a_new_node_joins_takes_its_share_and_only_that(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, client, chunks = await cluster_with_files(tmp_path, nursery, monkeypatch, 3)
    before = {c.block_id: holders(nodes, c.block_id) for c in chunks}

    await nodes.join("n4", repair=FAST_REPAIR)
    await wait_until(map_where(client, lambda m: m.node("n4").state == "active"), seconds=60)
    cmap = client.map
    assert cmap.node("n4").state == "active"
    await wait_until(lambda: placed_on(nodes, chunks, cmap), seconds=60)
    # Every copy that moved went to n4; no other node took any.
    for chunk in chunks:
        gained = holders(nodes, chunk.block_id) - before[chunk.block_id]
        assert gained <= {"n4"}
    assert any("n4" in holders(nodes, c.block_id) for c in chunks)
    await all_read_back(client, chunks)


async def test_a_drained_node_leaves_and_stops(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, client, chunks = await cluster_with_files(tmp_path, nursery, monkeypatch, 4)
    [outside] = {n.node_id for n in nodes.map.nodes} - {n.node_id for n in nodes.map.meta_nodes()}

    await client.pool.call(client.map.node("n1").address, "map.change", ["drain", [outside]])
    await wait_until(map_where(client, lambda m: m.node(outside).state == "removed"), seconds=60)
    with trio.fail_after(10):
        await nodes.stopped[outside].wait()
    assert outside in nodes.departed
    assert all(outside not in holders(nodes, c.block_id) for c in chunks)
    assert await placed_on(nodes, chunks, client.map)
    assert outside not in client.map.acceptors()
    await all_read_back(client, chunks)


async def test_a_dead_node_removed_is_copied_again_from_the_others(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, client, chunks = await cluster_with_files(tmp_path, nursery, monkeypatch, 4)
    [outside] = {n.node_id for n in nodes.map.nodes} - {n.node_id for n in nodes.map.meta_nodes()}
    await nodes.stop(outside)

    wire = await client.pool.call(
        client.map.node("n1").address, "map.change", ["remove", [outside]]
    )
    removed = ClusterMap.from_wire(wire)
    assert removed.node(outside).state == "removed"
    await wait_until(lambda: placed_on(nodes, chunks, removed), seconds=60)
    assert all(len(holders(nodes, c.block_id) - {outside}) == 3 for c in chunks)
    await all_read_back(client, chunks)


async def test_a_node_down_past_the_out_time_is_copied_away_and_rejoins(
    tmp_path: Path,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    expected_logs: list[str],
) -> None:
    expected_logs.append("marking it out")
    nodes, client, chunks = await cluster_with_files(
        tmp_path, nursery, monkeypatch, 4, out_after=2.0
    )
    [outside] = {n.node_id for n in nodes.map.nodes} - {n.node_id for n in nodes.map.meta_nodes()}
    await nodes.stop(outside)

    await wait_until(map_where(client, lambda m: m.node(outside).state == "down-out"), seconds=30)
    out = client.map
    # No command: the others' repair brings every block back to three copies.
    await wait_until(lambda: placed_on(nodes, chunks, out), seconds=60)
    assert all(len(holders(nodes, c.block_id) - {outside}) == 3 for c in chunks)

    await nodes.start(outside)
    await wait_until(map_where(client, lambda m: m.node(outside).state == "active"), seconds=60)
    back = client.map
    await wait_until(lambda: placed_on(nodes, chunks, back), seconds=60)
    assert any(outside in holders(nodes, c.block_id) for c in chunks)
    await all_read_back(client, chunks)


async def test_a_new_node_replaces_an_old_one_and_takes_exactly_its_blocks(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, client, chunks = await cluster_with_files(tmp_path, nursery, monkeypatch, 4)
    [old] = {n.node_id for n in nodes.map.nodes} - {n.node_id for n in nodes.map.meta_nodes()}
    had = {c.block_id for c in chunks if old in holders(nodes, c.block_id)}

    await nodes.join("n5", repair=FAST_REPAIR)
    await wait_until(map_where(client, lambda m: "n5" in m.acceptors()))
    address = client.map.node("n1").address
    wire = await client.pool.call(address, "map.change", ["replace", [old, "n5"]])
    replaced = ClusterMap.from_wire(wire)
    assert (replaced.node(old).state, replaced.node("n5").ring) == ("draining", old)

    await wait_until(map_where(client, lambda m: m.node(old).state == "removed"), seconds=60)
    await wait_until(lambda: placed_on(nodes, chunks, client.map), seconds=60)
    assert {c.block_id for c in chunks if "n5" in holders(nodes, c.block_id)} == had
    await all_read_back(client, chunks)
