"""Blocks no file references (uploads never committed) are collected, and never one a file
needs: in-process nodes with short ages, and a randomized run of writers, deleters, truncates
and the collectors together, checked byte for byte."""

from __future__ import annotations

import collections
import os
import random
from pathlib import Path

import pytest
import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.blocks.repair import RepairConfig
from ringfs.node.checksum import checksum
from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import (
    Attr,
    Chunk,
    ChunkUpdate,
    CommitChunks,
    Mknod,
    Purge,
    ReadChunks,
    Setattr,
    Unlink,
)
from tests.cluster.conftest import LocalNodes, start_nodes, wait_until
from tests.cluster.test_collector import holders

#: Short everything: abandoned after 0.6 s, deleted 0.3 s after that, a pass every 0.2 s.
AGES = RepairConfig(interval=0.2, retry=0.2, orphan_age=0.6)
GRACE = 0.3


async def upload(cluster: Cluster, data: bytes) -> Chunk:
    stored = await cluster.put_block(os.urandom(16), memoryview(data), checksum(data))
    return Chunk(0, stored.block_id, len(data), stored.checksum)


async def commit(cluster: Cluster, ino: int, chunk: Chunk, base: Chunk | None) -> Attr:
    update = ChunkUpdate(chunk, base.block_id if base else b"", base.length if base else 0)
    size = chunk.length
    result: Attr = await cluster.meta_apply(
        CommitChunks(ino, (update,), size, None, None, None, None, 0)
    )
    return result


def stored_anywhere(nodes: LocalNodes) -> set[bytes]:
    return {
        bytes.fromhex(path.name)
        for node in nodes.configs
        for path in (nodes.root / node / "store" / "blocks").glob("*/*/*")
    }


async def test_uploads_nobody_committed_are_collected_and_refused_after(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    nodes = await start_nodes(tmp_path, nursery, count=3, gc_grace=GRACE, repair=AGES)
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    attr: Attr = await cluster.meta_apply(Mknod(1, b"f", 0o100644, 0, 0, 0, 0))
    kept = await upload(cluster, b"committed")
    await commit(cluster, attr.ino, kept, None)
    lost = [await upload(cluster, os.urandom(100)) for _ in range(5)]

    async def collected() -> bool:
        return not any(holders(nodes, chunk.block_id) for chunk in lost)

    await wait_until(collected)
    assert len(holders(nodes, kept.block_id)) == 3
    with pytest.raises(NodeError) as refused:
        await commit(cluster, attr.ino, lost[0], kept)  # too late: it is gone
    assert refused.value.name == "ESTALE"
    reply = await cluster.meta_query(ReadChunks(attr.ino, 0, 10))
    assert reply[1] == [kept]


@pytest.mark.parametrize("seed", range(1))
async def test_the_collectors_never_take_a_block_a_file_needs(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str], seed: int
) -> None:
    await _collectors_and_writers(tmp_path, nursery, seed)


# The slow tier (pytest -m slow).
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 140))
async def test_the_collectors_never_take_a_block_a_file_needs_slow(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str], seed: int
) -> None:
    await _collectors_and_writers(tmp_path, nursery, seed)


async def _collectors_and_writers(tmp_path: Path, nursery: trio.Nursery, seed: int) -> None:
    """Writers upload and commit after a random wait: within the orphan age, around it (the
    commit races the abandoning), long after it (refused: ESTALE), or never. Deleters unlink,
    truncaters cut to zero. The repairers abandon what nobody references, the collector
    deletes it. After every commit, and at the end, each file reads back what its last
    successful commit put there; at the end only referenced blocks are left on the nodes."""
    nodes = await start_nodes(tmp_path, nursery, count=3, gc_grace=GRACE, repair=AGES)
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    rng = random.Random(seed)
    files: dict[bytes, tuple[int, Chunk | None, bytes]] = {}  # name -> ino, chunk, contents

    # A file's change and its record in `files`, and a check, happen under the file's lock:
    # otherwise a truncate applied after a commit could be recorded before it.
    locks: dict[bytes, trio.Lock] = collections.defaultdict(trio.Lock)

    async def check(name: bytes) -> None:
        if name not in files:
            return
        ino, chunk, data = files[name]
        _, chunks = await cluster.meta_query(ReadChunks(ino, 0, 10))
        if chunk is None:
            assert chunks == []
            return
        assert chunks == [chunk]
        assert await cluster.get_block(chunk.block_id, chunk.checksum) == data

    async def writer(number: int) -> None:
        for _ in range(16):
            name = f"w{number}-{rng.randrange(4)}".encode()
            if name not in files:
                attr = await cluster.meta_apply(Mknod(1, name, 0o100644, 0, 0, 0, 0))
                files[name] = (attr.ino, None, b"")
            data = os.urandom(rng.randrange(1, 3000))
            chunk = await upload(cluster, data)
            # Around the orphan age, the commit races the repairers' abandoning; None: never.
            wait = rng.choice([0.0, 0.05, 0.2, 0.55, 0.6, 0.65, 0.7, 0.8, 2.0, None])
            if wait is None:
                continue
            await trio.sleep(wait)
            async with locks[name]:
                if name not in files:
                    continue  # deleted meanwhile
                ino, base, _ = files[name]
                try:
                    await commit(cluster, ino, chunk, base)
                except NodeError as exc:
                    # Refused: abandoned (too late), or the file changed or went meanwhile.
                    if exc.name not in ("ESTALE", "ECHANGED", "ENOENT"):
                        raise
                    continue
                files[name] = (ino, chunk, data)
                await check(name)

    async def deleter() -> None:
        for _ in range(15):
            await trio.sleep(rng.uniform(0.1, 0.4))
            if not files:
                continue
            name = rng.choice(sorted(files))
            async with locks[name]:
                ino, _, _ = files[name]
                if rng.random() < 0.5:
                    await cluster.meta_apply(Unlink(1, name, 0))
                    await cluster.meta_apply(Purge((ino,)))
                    del files[name]
                else:
                    await cluster.meta_apply(Setattr(ino, None, None, None, 0, None, None, 0))
                    files[name] = (ino, None, b"")

    async with trio.open_nursery() as inner:
        for number in range(3):
            inner.start_soon(writer, number)
        inner.start_soon(deleter)
    await trio.sleep(AGES.orphan_age + GRACE + 1.0)  # let the collectors do their worst
    for name in sorted(files):
        await check(name)
    referenced = {chunk.block_id for _, chunk, _ in files.values() if chunk is not None}

    async def only_referenced_left() -> bool:
        return stored_anywhere(nodes) == referenced

    await wait_until(only_referenced_left)
