"""Repair against in-process nodes: a node stores again, from the others, every copy it should
hold and lacks: after losing its blocks, after a copy went to a handoff while it was down, and
after a read found its copy corrupt."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.blocks.scrub import ScrubConfig, load
from ringfs.node.checksum import checksum
from ringfs.node.meta.commands import Attr, Chunk, Mknod
from tests.cluster.conftest import LocalNodes, start_nodes, wait_until
from tests.cluster.test_collector import holders, write_chunk


def block_file(nodes: LocalNodes, node: str, block_id: bytes) -> Path:
    name = block_id.hex()
    return nodes.root / node / "store" / "blocks" / name[:2] / name[2:4] / name


def sha256(data: bytes) -> bytes:
    """The checksum of blocks written by version 12 and before."""
    return hashlib.sha256(data).digest()


async def write_files(cluster: Cluster, count: int) -> list[Chunk]:
    """`count` one-block files; every other block has a checksum of the kind older versions
    wrote, so that repairs and moves are seen to keep each kind."""
    chunks = []
    for i in range(count):
        attr: Attr = await cluster.meta_apply(Mknod(1, f"f{i}".encode(), 0o100644, 0, 0, 0, 0))
        kind = sha256 if i % 2 else checksum
        chunks.append(await write_chunk(cluster, attr.ino, os.urandom(1000 + i), kind=kind))
    return chunks


def placed(nodes: LocalNodes, chunks: list[Chunk]) -> Callable[[], Awaitable[bool]]:
    """Whether every block is held by exactly the nodes of its placement."""

    async def check() -> bool:
        return all(
            holders(nodes, c.block_id) == {n.node_id for n in nodes.map.placement(c.block_id)}
            for c in chunks
        )

    return check


async def test_a_node_that_lost_its_blocks_stores_its_share_again(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    expected_logs.append("unavailable")  # the client may meet the stopped node
    nodes = await start_nodes(tmp_path, nursery, count=4)
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    chunks = await write_files(cluster, 40)
    await wait_until(placed(nodes, chunks))  # the trailing copies land

    victim = "n2"
    share = [c for c in chunks if victim in {n.node_id for n in nodes.map.placement(c.block_id)}]
    assert 0 < len(share) < len(chunks)  # with 4 nodes and R = 3, some blocks are elsewhere
    await nodes.stop(victim)
    shutil.rmtree(nodes.root / victim / "store" / "blocks")
    await nodes.start(victim)  # a pass runs at start

    await wait_until(placed(nodes, chunks))
    for chunk in share:
        other = next(iter(holders(nodes, chunk.block_id) - {victim}))
        mine = block_file(nodes, victim, chunk.block_id).read_bytes()
        assert mine == block_file(nodes, other, chunk.block_id).read_bytes()
    stats = dict(await cluster.repair_status())
    repair = next(s for info, s in stats.items() if info.node_id == victim)
    assert repair is not None
    assert repair["repaired"] == len(share)
    await wait_until(lambda: _clean(cluster, victim))


async def _clean(cluster: Cluster, node: str) -> bool:
    """Whether the node's last pass found nothing missing it could not store again."""
    stats = {info.node_id: s for info, s in await cluster.repair_status()}
    repair = stats[node]
    return repair is not None and repair["clean"] >= 1 and repair["current"] is None


async def test_a_copy_handed_off_while_its_node_was_down_reaches_it_when_it_is_back(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    expected_logs += ["not stored", "handing block", "unavailable"]
    nodes = await start_nodes(tmp_path, nursery, count=4)
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    meta = {n.node_id for n in nodes.map.meta_nodes()}
    down = next(name for name in nodes.configs if name not in meta)
    await nodes.stop(down)
    chunks = await write_files(cluster, 30)
    mine = [c for c in chunks if down in {n.node_id for n in nodes.map.placement(c.block_id)}]
    assert mine
    assert not any(down in holders(nodes, c.block_id) for c in mine)

    handed_off = {c.block_id: holders(nodes, c.block_id) - _placement(nodes, c) for c in mine}
    assert all(handed_off.values())  # each went to a node outside its placement

    await nodes.start(down)  # its pass at start fetches its copies
    await wait_until(lambda: _all_hold(nodes, down, [c.block_id for c in mine]))
    await cluster.repair_start()  # the next pass of the handoff holders lets them go
    await wait_until(placed(nodes, chunks))  # every handoff copy is gone


def _placement(nodes: LocalNodes, chunk: Chunk) -> set[str]:
    return {node.node_id for node in nodes.map.placement(chunk.block_id)}


async def _all_hold(nodes: LocalNodes, node: str, block_ids: list[bytes]) -> bool:
    return all(node in holders(nodes, block_id) for block_id in block_ids)


async def test_a_corrupt_copy_found_by_a_read_is_stored_again(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    expected_logs += ["is corrupt", "reading another replica"]
    nodes = await start_nodes(tmp_path, nursery, count=3)
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    chunks = await write_files(cluster, 3)
    await wait_until(placed(nodes, chunks))

    async def passes_done() -> bool:  # the passes at start are over: the next is minutes away
        return all([await _clean(cluster, name) for name in nodes.configs])

    await wait_until(passes_done)
    chunk = chunks[0]
    first = nodes.map.placement(chunk.block_id)[0].node_id
    path = block_file(nodes, first, chunk.block_id)
    good = path.read_bytes()
    path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))

    # Reads go to the replicas by load, a third of them first to this one: read until one
    # meets the corrupt copy, which is quarantined, and the node asks for a repair pass.
    quarantine = tmp_path / first / "store" / "quarantine"
    for _ in range(100):
        data = await cluster.get_block(chunk.block_id, chunk.checksum)  # another copy answers
        assert len(data) == chunk.length
        if any(quarantine.iterdir()):  # noqa: ASYNC240 - a small directory
            break
    assert len(list(quarantine.iterdir())) == 1  # noqa: ASYNC240
    await wait_until(lambda: _has(path, good))


async def _has(path: Path, content: bytes) -> bool:
    return path.exists() and path.read_bytes() == content  # noqa: ASYNC240 - a small file


async def test_scrub_finds_corrupt_copies_and_repair_replaces_them(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    expected_logs += ["is corrupt"]
    nodes = await start_nodes(
        tmp_path, nursery, count=3, scrub=ScrubConfig(period=0.5, rate=100 * 1024 * 1024)
    )
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    chunks = await write_files(cluster, 8)
    await wait_until(placed(nodes, chunks))
    good = {c.block_id: block_file(nodes, "n1", c.block_id).read_bytes() for c in chunks}
    # One copy of some blocks, two copies of others: a flipped byte, a cut-off end.
    damaged = {chunks[0].block_id: ["n1"], chunks[1].block_id: ["n2"]}
    damaged |= {chunks[2].block_id: ["n1", "n3"], chunks[3].block_id: ["n2", "n3"]}
    for block_id, names in damaged.items():
        for name in names:
            path = block_file(nodes, name, block_id)
            content = path.read_bytes()
            flipped = content[:-1] + bytes([content[-1] ^ 0x40])
            path.write_bytes(flipped if name != "n3" else content[:-5])

    async def restored() -> bool:
        return all(
            block_file(nodes, name, c.block_id).exists()
            and block_file(nodes, name, c.block_id).read_bytes() == good[c.block_id]
            for c in chunks
            for name in ("n1", "n2", "n3")
        )

    await wait_until(restored)  # no read asked for them: scrub found them
    for chunk in chunks:
        data = await cluster.get_block(chunk.block_id, chunk.checksum)
        assert data == good[chunk.block_id][-chunk.length :]
    # Every damaged copy was set aside: found by a scrub, or by a repair that read it as a
    # source (the counts of a pass cannot tell, as passes follow each other every 0.5 s).
    quarantined = {
        name: len(list((tmp_path / name / "store" / "quarantine").iterdir()))
        for name in ("n1", "n2", "n3")
    }
    assert quarantined == {"n1": 2, "n2": 2, "n3": 2}


async def test_a_scrub_pass_goes_on_where_it_was_after_a_restart(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    slow = ScrubConfig(period=3600, rate=2_000)  # about two blocks a second
    nodes = await start_nodes(tmp_path, nursery, count=3)
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    chunks = await write_files(cluster, 30)
    await wait_until(placed(nodes, chunks))
    await nodes.stop("n1")
    nodes.configs["n1"] = dataclasses.replace(nodes.configs["n1"], scrub=slow)
    (tmp_path / "n1" / "scrub.json").unlink()  # a pass is due at once
    await nodes.start("n1")

    async def verified(count: int) -> bool:
        state = load(tmp_path / "n1" / "scrub.json")
        return state.started is not None and state.verified >= count

    await wait_until(lambda: verified(4))
    before = load(tmp_path / "n1" / "scrub.json")
    await nodes.stop("n1")
    await nodes.start("n1")
    stats = {info.node_id: s for info, s in await cluster.node_stats()}
    scrub = stats["n1"]["scrub"]
    assert scrub["started"] == before.started  # the same pass
    assert scrub["verified"] >= before.verified
    assert scrub["cursor"] >= before.cursor
