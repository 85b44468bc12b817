"""Changes of the cluster map on in-process nodes: a change asked of one node is agreed, every
node and client goes by it within moments, and the blocks move to the new placement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from ringfs.fs import cluster as cluster_module
from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node import agreement
from ringfs.node.blocks.repair import RepairConfig
from ringfs.node.cluster.map import ClusterMap
from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import Chunk
from tests.cluster.conftest import LocalNodes, start_nodes, wait_until
from tests.cluster.test_collector import holders
from tests.cluster.test_repair import write_files


def placed(
    nodes: LocalNodes, chunks: list[Chunk], cmap: ClusterMap
) -> Callable[[], Awaitable[bool]]:
    """Whether every block is held by exactly the nodes `cmap` places it on."""

    async def check() -> bool:
        return all(
            holders(nodes, c.block_id) == {n.node_id for n in cmap.placement(c.block_id)}
            for c in chunks
        )

    return check


async def four_nodes_with_files(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> tuple[LocalNodes, Cluster, list[Chunk]]:
    """Four nodes that follow the map and repair within a second or so, a client that follows
    it too, and 40 one-block files in place."""
    monkeypatch.setattr(agreement, "FOLLOW_INTERVAL", 0.2)
    monkeypatch.setattr(cluster_module, "MAP_FOLLOW_INTERVAL", 0.2)
    repair = RepairConfig(interval=1.0, retry=1.0)
    nodes = await start_nodes(tmp_path, nursery, count=4, repair=repair)
    client = await nodes.client()
    await wait_for_filesystem(client)
    nursery.start_soon(client.follow_map)
    chunks = await write_files(client, 40)
    await wait_until(placed(nodes, chunks, nodes.map))
    return nodes, client, chunks


async def test_a_weight_change_is_followed_and_the_blocks_move(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, client, chunks = await four_nodes_with_files(tmp_path, nursery, monkeypatch)

    n1 = client.map.node("n1").address
    with pytest.raises(NodeError, match="no node 'n9'"):
        await client.pool.call(n1, "map.change", ["weight", ["n9", 2]])
    new = ClusterMap.from_wire(await client.pool.call(n1, "map.change", ["weight", ["n4", 4]]))
    assert (new.epoch, new.node("n4").weight) == (2, 4.0)
    moving = [c for c in chunks if nodes.map.placement(c.block_id) != new.placement(c.block_id)]
    assert moving  # n4 takes a bigger share

    async def followed() -> bool:
        told = [await client.pool.call(n.address, "map.get", []) for n in new.nodes]
        return client.map == new and all(ClusterMap.from_wire(t) == new for t in told)

    await wait_until(followed)
    await wait_until(placed(nodes, chunks, new), seconds=60)
    for chunk in chunks:
        data = await client.get_block(chunk.block_id, chunk.checksum)
        assert len(data) == chunk.length


async def test_a_drained_node_gives_its_blocks_away(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, client, chunks = await four_nodes_with_files(tmp_path, nursery, monkeypatch)
    [outside] = {n.node_id for n in nodes.map.nodes} - {n.node_id for n in nodes.map.meta_nodes()}
    held = [c for c in chunks if outside in holders(nodes, c.block_id)]
    assert held

    address = client.map.node(outside).address
    wire = await client.pool.call(address, "map.change", ["drain", [outside]])
    drained = ClusterMap.from_wire(wire)
    assert drained.node(outside).state == "draining"
    await wait_until(placed(nodes, chunks, drained), seconds=60)
    assert all(outside not in holders(nodes, c.block_id) for c in chunks)
    for chunk in held:
        assert len(await client.get_block(chunk.block_id, chunk.checksum)) == chunk.length
    meta = client.map.meta_nodes()[0].address
    with pytest.raises(NodeError, match="would leave 2 nodes for 3 copies"):
        await client.pool.call(meta, "map.change", ["drain", [client.map.meta_nodes()[0].node_id]])
