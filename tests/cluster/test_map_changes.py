"""Changes of the cluster map on in-process nodes: a change asked of one node is agreed, every
node and client goes by it within moments, and the blocks move to the new placement."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio

from ringfs.fs import cluster as cluster_module
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node import agreement
from ringfs.node.blocks.repair import RepairConfig
from ringfs.node.cluster.map import ClusterMap
from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import Chunk
from tests.cluster.conftest import LocalNodes, start_nodes
from tests.cluster.test_collector import holders
from tests.cluster.test_repair import wait_until, write_files


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


async def test_a_weight_change_is_followed_and_the_blocks_move(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agreement, "FOLLOW_INTERVAL", 0.2)
    monkeypatch.setattr(cluster_module, "MAP_FOLLOW_INTERVAL", 0.2)
    repair = RepairConfig(interval=1.0, retry=1.0)
    nodes = await start_nodes(tmp_path, nursery, count=4, repair=repair)
    client = await nodes.client()
    await wait_for_filesystem(client)
    nursery.start_soon(client.follow_map)
    chunks = await write_files(client, 40)
    await wait_until(placed(nodes, chunks, nodes.map))

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
