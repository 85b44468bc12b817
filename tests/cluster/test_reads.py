"""Reading a file of many blocks through the mount's handlers (no kernel), against in-process
nodes: a sequential read fetches the next blocks ahead, a random read only its own."""

from __future__ import annotations

import os

import pytest
import trio

from ringfs.fs.files import READAHEAD_CHUNKS
from ringfs.fs.operations import Operations
from tests.cluster.conftest import LocalNodes
from tests.cluster.test_files import CHUNK, flushed, mount_ops
from tests.cluster.test_shared_files import reopen

CHUNKS = 12


async def a_cold_reader(
    nodes: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> tuple[Operations, int, bytes, list[int]]:
    """A mount with nothing cached, the inode of a file of `CHUNKS` chunks (each in a block of
    its own) another mount wrote, its bytes, and the chunks whose blocks the reader fetches
    from the nodes from now on (in the order asked)."""
    data = os.urandom(CHUNKS * CHUNK)
    writer = await mount_ops(nodes, nursery, inline_max=0)
    fh, ino = await flushed(writer, b"f", data)
    await writer.release(fh)
    reader = await mount_ops(nodes, nursery)
    _, chunks, _ = await reader.cluster.read_chunks(ino)
    index = {chunk.block_id: chunk.idx for chunk in chunks}
    assert len(index) == CHUNKS
    fetched: list[int] = []
    real = reader.cluster.get_block

    async def recording(block_id: bytes, checksum: bytes) -> bytes:
        fetched.append(index[block_id])
        return await real(block_id, checksum)

    monkeypatch.setattr(reader.cluster, "get_block", recording)
    return reader, ino, data, fetched


async def settled() -> None:
    """Time for fetches started in the background to be asked."""
    await trio.sleep(0.3)


async def test_a_sequential_read_fetches_the_next_blocks_ahead(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, ino, data, fetched = await a_cold_reader(small_chunks, nursery, monkeypatch)
    fh = await reopen(reader, ino)
    step = CHUNK // 2
    assert await reader.read(fh, 0, step) == data[:step]
    await settled()
    assert sorted(fetched) == list(range(1 + READAHEAD_CHUNKS))
    assert await reader.read(fh, step, step) == data[step : 2 * step]
    assert await reader.read(fh, 2 * step, 3 * step) == data[2 * step : 5 * step]
    await settled()
    assert sorted(fetched) == list(range(3 + READAHEAD_CHUNKS))  # each block once
    await reader.release(fh)


async def test_a_random_read_fetches_its_own_block_only(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, ino, data, fetched = await a_cold_reader(small_chunks, nursery, monkeypatch)
    fh = await reopen(reader, ino)
    for idx in (7, 2, 10, 4):
        offset = idx * CHUNK + 100
        assert await reader.read(fh, offset, 4096) == data[offset : offset + 4096]
    await settled()
    assert fetched == [7, 2, 10, 4]
    await reader.release(fh)
