"""Reading a file of many blocks through the mount's handlers (no kernel), against in-process
nodes: a sequential read fetches whole blocks and the next ones ahead, a random read only the
bytes it reads, from a copy the node verified whole."""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import Any

import pyfuse3
import pytest
import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.files import READAHEAD_CHUNKS
from ringfs.fs.operations import Operations
from ringfs.node.checksum import checksum
from ringfs.node.errors import Unavailable
from tests.cluster.conftest import LocalNodes, wait_until
from tests.cluster.test_files import CHUNK, flushed, mount_ops
from tests.cluster.test_shared_files import reopen

CHUNKS = 12


#: What a reader fetched: the chunk, and the span of its block asked for (None: all of it).
Fetches = list[tuple[int, tuple[int, int] | None]]


async def a_cold_reader(
    nodes: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> tuple[Operations, int, bytes, Fetches]:
    """A mount with nothing cached, the inode of a file of `CHUNKS` chunks (each in a block of
    its own) another mount wrote, its bytes, and what the reader fetches from the nodes from
    now on (in the order asked)."""
    data = os.urandom(CHUNKS * CHUNK)
    writer = await mount_ops(nodes, nursery, inline_max=0)
    fh, ino = await flushed(writer, b"f", data)
    await writer.release(fh)
    reader = await mount_ops(nodes, nursery)
    _, chunks, _ = await reader.cluster.read_chunks(ino)
    index = {chunk.block_id: chunk.idx for chunk in chunks}
    assert len(index) == CHUNKS
    fetched: Fetches = []
    real = reader.cluster.get_block

    async def recording(
        block_id: bytes, checksum: bytes, span: tuple[int, int] | None = None
    ) -> bytes:
        fetched.append((index[block_id], span))
        return await real(block_id, checksum, span)

    monkeypatch.setattr(reader.cluster, "get_block", recording)
    return reader, ino, data, fetched


async def settled() -> None:
    """Time for fetches started in the background to be asked."""
    await trio.sleep(0.3)


async def test_a_sequential_read_fetches_whole_blocks_and_the_next_ones_ahead(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, ino, data, fetched = await a_cold_reader(small_chunks, nursery, monkeypatch)
    fh = await reopen(reader, ino)
    step = CHUNK // 2
    assert await reader.read(fh, 0, step) == data[:step]
    await settled()
    assert sorted(fetched) == [(idx, None) for idx in range(1 + READAHEAD_CHUNKS)]
    assert await reader.read(fh, step, step) == data[step : 2 * step]
    assert await reader.read(fh, 2 * step, 3 * step) == data[2 * step : 5 * step]
    await settled()
    assert sorted(fetched) == [(idx, None) for idx in range(3 + READAHEAD_CHUNKS)]  # each once
    await reader.release(fh)


async def test_a_random_read_fetches_only_the_bytes_it_reads(
    small_chunks: LocalNodes, nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader, ino, data, fetched = await a_cold_reader(small_chunks, nursery, monkeypatch)
    fh = await reopen(reader, ino)
    reads = [(7, 100, 4096), (2, 0, 16384), (10, CHUNK - 1000, 3000), (4, 5, 1)]
    for idx, within, count in reads:
        offset = idx * CHUNK + within
        assert await reader.read(fh, offset, count) == data[offset : offset + count]
    await settled()
    assert fetched == [
        (7, (100, 4096)),
        (2, (0, 16384)),
        (10, (CHUNK - 1000, 1000)),
        (11, (0, 2000)),
        (4, (5, 1)),
    ]
    await reader.release(fh)


async def test_a_random_read_never_returns_bytes_of_a_corrupt_block(
    small_chunks: LocalNodes,
    nursery: trio.Nursery,
    monkeypatch: pytest.MonkeyPatch,
    expected_logs: list[str],
) -> None:
    """Each node verifies the whole block before it answers a few bytes of it: with every
    copy spoiled far from the bytes read, the read fails rather than return them."""
    expected_logs += ["is corrupt", "unavailable", "no node could give block"]
    reader, ino, data, fetched = await a_cold_reader(small_chunks, nursery, monkeypatch)
    block_id = next(iter(await blocks_of(reader, ino, 6)))
    copies = list(small_chunks.root.rglob(f"store/blocks/*/*/{block_id.hex()}"))
    assert len(copies) == 3
    for path in copies:
        spoiled = bytearray(path.read_bytes())
        spoiled[-1] ^= 0xFF  # the block's last byte
        path.write_bytes(spoiled)
    fh = await reopen(reader, ino)
    with pytest.raises(pyfuse3.FUSEError) as failed:
        await reader.read(fh, 6 * CHUNK + 10, 4096)
    assert failed.value.errno == errno.EIO
    assert [idx for idx, _ in fetched] == [6]
    await reader.release(fh)


async def blocks_of(ops: Operations, ino: int, idx: int) -> set[bytes]:
    _, chunks, _ = await ops.cluster.read_chunks(ino)
    return {chunk.block_id for chunk in chunks if chunk.idx == idx}


#: What a reader's first `block.get` does instead, given the real `pool.call`, the address
#: and the parameters: it runs once the reader has learned a newer map.
FirstFetch = Callable[[Callable[..., Awaitable[Any]], str, list[Any]], Awaitable[Any]]


async def a_reader_learning_a_map_at_its_first_fetch(
    nodes: LocalNodes, monkeypatch: pytest.MonkeyPatch, first: FirstFetch
) -> tuple[Cluster, bytes, bytes, list[int]]:
    """A client, a block it stored and its bytes, and the epochs its `block.get`s name from
    now on. Its first one waits until the client learns a newer map (the test makes one), then
    does what `first` does."""
    client = await nodes.client()
    block_id, data = os.urandom(16), os.urandom(10_000)
    await client.put_block(block_id, memoryview(data), checksum(data))
    epochs: list[int] = []
    real = client.pool.call

    async def newer_map() -> bool:
        return (await client.refresh_map()).epoch > epochs[0]

    async def call(address: str, method: str, params: list[Any], *rest: Any) -> Any:
        if method == "block.get":
            epochs.append(params[1])
            if len(epochs) == 1:
                await wait_until(newer_map)  # it arrives while this call is out
                return await first(real, address, params)
        return await real(address, method, params, *rest)

    monkeypatch.setattr(client.pool, "call", call)
    return client, block_id, data, epochs


async def test_each_attempt_at_a_block_names_the_map_the_reader_goes_by_then(
    nodes: LocalNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader that learns a newer map between two replicas asks the next one by it: a node
    asked by the older map would answer `ENEWMAP` with the map the reader has already."""

    async def fails(real: Callable[..., Awaitable[Any]], address: str, params: list[Any]) -> Any:
        raise Unavailable(f"node {address}", [address])

    client, block_id, data, epochs = await a_reader_learning_a_map_at_its_first_fetch(
        nodes, monkeypatch, fails
    )
    n1 = client.map.node("n1").address
    for weight, span in ((2.0, None), (3.0, (100, 50))):
        before = client.map.epoch
        await client.pool.call(n1, "map.change", ["weight", ["n3", weight]])
        epochs.clear()
        read = await client.get_block(block_id, checksum(data), span)
        assert read == (data if span is None else data[100:150])
        assert epochs == [before, before + 1]


async def test_a_refusal_naming_the_map_the_reader_learned_meanwhile_sends_it_on_by_that_map(
    nodes: LocalNodes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node without the block answers a reader that named an older map with `ENEWMAP`. When
    another task gave the reader that map while the call was out, the refusal is no news: the
    reader asks the rest by that map, and warns of nothing."""

    async def lacks_it(real: Callable[..., Awaitable[Any]], address: str, params: list[Any]) -> Any:
        async def node_has_it() -> bool:
            return (await real(address, "map.get", []))["epoch"] > params[1]

        await wait_until(node_has_it)
        return await real(address, "block.get", [os.urandom(16), *params[1:]])  # ENEWMAP

    client, block_id, data, epochs = await a_reader_learning_a_map_at_its_first_fetch(
        nodes, monkeypatch, lacks_it
    )
    before = client.map.epoch
    await client.pool.call(client.map.node("n1").address, "map.change", ["weight", ["n3", 2.0]])
    assert await client.get_block(block_id, checksum(data)) == data
    assert epochs == [before, before + 1]
