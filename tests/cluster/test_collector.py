"""The garbage collector against in-process nodes: replaced blocks are deleted from every node
once their grace period is over, and stay listed while a node that may hold them is down."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.mount import wait_for_filesystem
from ringfs.node.checksum import checksum
from ringfs.node.meta.commands import Attr, Chunk, ChunkUpdate, CommitChunks, Garbage, Mknod
from tests.cluster.conftest import LocalNodes, start_nodes, wait_until

GRACE = 0.3


def holders(nodes: LocalNodes, block_id: bytes) -> set[str]:
    name = block_id.hex()
    return {
        node
        for node in nodes.configs
        if (nodes.root / node / "store" / "blocks" / name[:2] / name[2:4] / name).exists()
    }


async def write_chunk(
    cluster: Cluster,
    ino: int,
    data: bytes,
    base: Chunk | None = None,
    kind: Callable[[bytes], bytes] = checksum,
) -> Chunk:
    """Chunk 0 of the file, written anew over `base`, with a checksum of `kind`."""
    stored = await cluster.put_block(os.urandom(16), memoryview(data), kind(data))
    chunk = Chunk(0, stored.block_id, len(data), stored.checksum)
    update = ChunkUpdate(chunk, base.block_id if base else b"", base.length if base else 0)
    await cluster.meta_apply(CommitChunks(ino, (update,), len(data), None, None, None, None, 0))
    return chunk


async def test_replaced_blocks_are_deleted_everywhere_after_the_grace_period(
    tmp_path: Path, nursery: trio.Nursery, expected_logs: list[str]
) -> None:
    nodes = await start_nodes(tmp_path, nursery, count=4, gc_grace=GRACE)
    cluster = await nodes.client()
    await wait_for_filesystem(cluster)
    attr: Attr = await cluster.meta_apply(Mknod(1, b"f", 0o100644, 0, 0, 0, 0))
    old = await write_chunk(cluster, attr.ino, b"old contents")

    async def three_copies() -> bool:
        return len(holders(nodes, old.block_id)) == 3

    async def copies_only_on(names: set[str]) -> bool:
        return holders(nodes, old.block_id) <= names

    async def garbage() -> list[bytes]:
        listed: list[bytes] = await cluster.meta_query(Garbage(10))
        return listed

    async def no_garbage() -> bool:
        return not await garbage()

    await wait_until(three_copies)  # the last one trails the write quorum
    # The node outside the meta group goes down: it may hold a copy nobody could delete.
    meta = {node.node_id for node in nodes.map.meta_nodes()}
    outsider = next(name for name in nodes.configs if name not in meta)
    await nodes.stop(outsider)
    expected_logs += [f"garbage collection: node {outsider} failed", "not stored"]
    new = await write_chunk(cluster, attr.ino, b"new contents", base=old)
    assert await garbage() == [old.block_id]
    started = trio.current_time()
    await wait_until(lambda: copies_only_on({outsider}))
    assert trio.current_time() - started >= GRACE
    await trio.sleep(5 * GRACE)
    # Still listed: the stopped node did not confirm it.
    assert await garbage() == [old.block_id]

    await nodes.start(outsider)
    await wait_until(no_garbage)
    assert holders(nodes, old.block_id) == set()
    assert len(holders(nodes, new.block_id)) >= 2
    gc = [stats["gc"] for _, stats in await cluster.node_stats() if stats and stats["gc"]]
    assert [(g["collected"], g["failing"]) for g in gc if g["active"]] == [(1, [])]
