"""Members come and go on in-process nodes: a new node joins and fills up, a drained one leaves
and stops, a dead one is removed or marked out (and joins again when back), a new one replaces
an old one. Each time the blocks end on exactly the new placement and every one reads back."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from ringfs.fs import cluster as cluster_module
from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node import agreement, lifecycle
from ringfs.node.blocks.repair import RepairConfig
from ringfs.node.cluster.map import MAP_FILE, ClusterMap
from ringfs.node.errors import NEWER_MAP, NodeError
from ringfs.node.lifecycle import own_move
from ringfs.node.meta.commands import Chunk
from tests.cluster.conftest import LocalNodes, start_nodes, wait_until
from tests.cluster.test_collector import holders
from tests.cluster.test_repair import write_files

FAST_REPAIR = RepairConfig(interval=1.0, retry=1.0)


async def cluster_with_files(
    tmp_path: Path,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    count: int,
    out_after: float = 600.0,
    moves_every: float = 0.2,
) -> tuple[LocalNodes, Cluster, list[Chunk]]:
    """`count` nodes that follow the map, repair within a second or so and make their own
    moves after each repair pass and at least every `moves_every` seconds, a client that
    follows the map too, and 40 one-block files in place."""
    monkeypatch.setattr(agreement, "FOLLOW_INTERVAL", 0.2)
    monkeypatch.setattr(lifecycle, "INTERVAL", moves_every)
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


async def all_read_back(nodes: LocalNodes, client: Cluster, chunks: list[Chunk]) -> None:
    """Every block reads back, and every copy of it holds the checksum its file names."""
    for chunk in chunks:
        assert len(await client.get_block(chunk.block_id, chunk.checksum)) == chunk.length
        for node in holders(nodes, chunk.block_id) & set(nodes.scopes):
            address = client.map.node(node).address
            assert await client.pool.call(address, "block.verify", [chunk.block_id]) == (
                chunk.checksum
            ), f"{node}'s copy of {chunk.block_id.hex()}"


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
    await all_read_back(nodes, client, chunks)


async def test_a_drained_node_leaves_and_stops(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It leaves after the repair pass that gave its last copy away, with no periodic look at
    its state (`moves_every`) to wait for."""
    nodes, client, chunks = await cluster_with_files(
        tmp_path, nursery, monkeypatch, 4, moves_every=math.inf
    )
    outside = outside_meta(nodes)

    await client.pool.call(client.map.node("n1").address, "map.change", ["drain", [outside]])
    await wait_until(map_where(client, lambda m: m.node(outside).state == "removed"), seconds=60)
    with trio.fail_after(10):
        await nodes.stopped[outside].wait()
    assert outside in nodes.departed
    # It keeps the map that removed it: started again (as `ringfs up` would), it knows.
    kept = ClusterMap.load(nodes.configs[outside].data_dir / MAP_FILE)
    assert kept.node(outside).state == "removed"
    assert all(outside not in holders(nodes, c.block_id) for c in chunks)
    assert await placed_on(nodes, chunks, client.map)
    assert outside not in client.map.acceptors()
    await all_read_back(nodes, client, chunks)


async def test_a_dead_node_removed_is_copied_again_from_the_others(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, client, chunks = await cluster_with_files(tmp_path, nursery, monkeypatch, 4)
    outside = outside_meta(nodes)
    await nodes.stop(outside)

    wire = await client.pool.call(
        client.map.node("n1").address, "map.change", ["remove", [outside]]
    )
    removed = ClusterMap.from_wire(wire)
    assert removed.node(outside).state == "removed"
    await wait_until(lambda: placed_on(nodes, chunks, removed), seconds=60)
    assert all(len(holders(nodes, c.block_id) - {outside}) == 3 for c in chunks)
    await all_read_back(nodes, client, chunks)


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
    outside = outside_meta(nodes)
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
    await all_read_back(nodes, client, chunks)


async def test_a_new_node_replaces_an_old_one_and_takes_exactly_its_blocks(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, client, chunks = await cluster_with_files(tmp_path, nursery, monkeypatch, 4)
    old = outside_meta(nodes)
    had = {c.block_id for c in chunks if old in holders(nodes, c.block_id)}

    await nodes.join("n5", repair=FAST_REPAIR)
    await wait_until(map_where(client, lambda m: "n5" in m.acceptors()))
    address = client.map.node("n1").address
    wire = await client.pool.call(address, "map.change", ["replace", [old, "n5"]])
    replaced = ClusterMap.from_wire(wire)
    # The answer is the register's value once the change is in it: when the proposal had to be
    # retried, the old node may have drained and left in between.
    assert replaced.node("n5").ring == old
    assert replaced.node(old).state in ("draining", "removed")

    await wait_until(map_where(client, lambda m: m.node(old).state == "removed"), seconds=60)
    await wait_until(lambda: placed_on(nodes, chunks, client.map), seconds=60)
    assert {c.block_id for c in chunks if "n5" in holders(nodes, c.block_id)} == had
    await all_read_back(nodes, client, chunks)


async def test_a_writer_with_an_older_map_is_told_the_new_one_and_writes_by_it(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The drained node stays until the end: it would leave after the pass that emptied it.
    def never_leave(state: str, filled: bool, empty: bool, seated: bool) -> str | None:
        move = own_move(state, filled, empty, seated)
        return None if move == "leave" else move

    monkeypatch.setattr(lifecycle, "own_move", never_leave)
    nodes, client, _ = await cluster_with_files(tmp_path, nursery, monkeypatch, 4)
    outside = outside_meta(nodes)
    stale = await nodes.client()  # goes by epoch 1, and does not follow the map by itself
    n1 = client.map.node("n1").address
    await client.pool.call(n1, "map.change", ["drain", [outside]])
    await wait_until(lambda: drained_everywhere(nodes, client, outside))

    block = next(
        b for b in (os.urandom(16) for _ in range(1000)) if placed_on_node(stale, b, outside)
    )
    data = os.urandom(4096)
    stored = await stale.put_block(block, memoryview(data), hashlib.sha256(data).digest())
    assert stale.map.node(outside).state == "draining"  # it learned the map from the answer
    assert client.map.node(outside).address not in stored.nodes
    assert len(stored.nodes) >= 2
    assert outside not in holders(nodes, block)


async def test_a_writer_refused_by_a_map_it_learned_meanwhile_places_the_rest_by_it(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node answers `ENEWMAP` to a `block.put` placed by an older map. When another task
    gave the writer that map while the put was out, the refusal is no news, and the writer
    places the rest of the block's copies by that map all the same."""
    nodes, _, _ = await cluster_with_files(tmp_path, nursery, monkeypatch, 4)
    writer = await nodes.client()  # goes by epoch 1, and does not follow the map by itself
    n1 = writer.map.node("n1").address
    before = writer.map.epoch
    epochs: list[int] = []
    real = writer.pool.call

    async def first_put_refused(address: str, method: str, params: list[Any], *rest: Any) -> Any:
        if method == "block.put":
            epochs.append(params[3])
            if len(epochs) == 1:
                newer = json.dumps(await real(n1, "map.change", ["weight", ["n4", 2.0]]))
                assert writer.offered(newer)  # as another task of the writer would, meanwhile
                raise NodeError(NEWER_MAP, newer)
        return await real(address, method, params, *rest)

    monkeypatch.setattr(writer.pool, "call", first_put_refused)
    data = os.urandom(4096)
    block = os.urandom(16)
    await writer.put_block(block, memoryview(data), hashlib.sha256(data).digest())

    async def four_puts() -> bool:  # the copy refused goes on in the background
        return len(epochs) == 4

    await wait_until(four_puts)
    assert epochs == [before, before, before, before + 1]


async def test_a_reader_with_an_older_map_is_told_the_new_one(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    nodes, client, _ = await cluster_with_files(tmp_path, nursery, monkeypatch, 4)
    n1 = client.map.node("n1").address
    await client.pool.call(n1, "map.change", ["weight", ["n4", 2]])
    await wait_until(lambda: drained_everywhere(nodes, client, None))
    missing = os.urandom(16)
    with pytest.raises(NodeError, match="ENOENT"):
        await client.pool.call(n1, "block.get", [missing, client.map.epoch])
    with pytest.raises(NodeError) as newer:
        await client.pool.call(n1, "block.get", [missing, 1])
    assert newer.value.name == NEWER_MAP
    assert ClusterMap.from_wire(json.loads(newer.value.detail)) == client.map


def outside_meta(nodes: LocalNodes) -> str:
    """The one node of four that is not in the meta group (which cannot move yet)."""
    [outside] = {n.node_id for n in nodes.map.nodes} - {n.node_id for n in nodes.map.meta_nodes()}
    return outside


def placed_on_node(client: Cluster, block: bytes, node_id: str) -> bool:
    return node_id in {n.node_id for n in client.map.placement(block)}


async def drained_everywhere(nodes: LocalNodes, client: Cluster, node_id: str | None) -> bool:
    """Whether every node goes by the map the client sees now (a newer one than epoch 1)."""
    cmap = await client.refresh_map()
    if cmap.epoch == 1:
        return False
    told = [await client.pool.call(n.address, "map.get", []) for n in cmap.holders()]
    return all(ClusterMap.from_wire(t).epoch == cmap.epoch for t in told)


async def test_a_node_back_after_several_changes_finds_the_new_acceptors(
    tmp_path: Path, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the node outside the meta group is down, the acceptors change three times (n5
    joins, n6 joins, n5 is removed): the map it kept names acceptors changes old. Back, it
    must walk forward to the current ones through the register."""
    nodes, client, chunks = await cluster_with_files(tmp_path, nursery, monkeypatch, 4)
    outside = outside_meta(nodes)
    await nodes.stop(outside)
    await nodes.join("n5", repair=FAST_REPAIR)
    await nodes.join("n6", repair=FAST_REPAIR)
    await nodes.stop("n5")
    n1 = client.map.node("n1").address
    newest = ClusterMap.from_wire(await client.pool.call(n1, "map.change", ["remove", ["n5"]]))
    assert set(newest.acceptors()) == {"n1", "n2", "n3", "n4", "n6"}
    kept = ClusterMap.load(nodes.root / outside / "cluster.json")
    assert set(kept.acceptors()) == {"n1", "n2", "n3", "n4"}

    await nodes.start(outside)

    async def caught_up() -> bool:
        kept = ClusterMap.load(nodes.root / outside / "cluster.json")
        return kept.epoch >= newest.epoch

    await wait_until(caught_up)
    assert ClusterMap.load(nodes.root / outside / "cluster.json").node("n5").state == "removed"
    await wait_until(lambda: placed_on(nodes, chunks, client.map), seconds=60)
    await all_read_back(nodes, client, chunks)
