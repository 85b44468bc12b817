"""A bounded cache of block contents, with shared fetches and readahead; random reads of a
few bytes of a block pass by it.

Blocks are immutable (a changed chunk gets a new block id), so a cached block can never be
stale and needs no invalidation: other clients' changes reach us as new ids in the chunk map
we fetch at open. Concurrent readers of one block share one fetch.
"""

from __future__ import annotations

import logging

import trio

from ringfs.fs.cluster import Cluster
from ringfs.fs.lru import CostBoundedLRU
from ringfs.node.errors import NodeError, Unavailable

log = logging.getLogger(__name__)


class _Fetch:
    __slots__ = ("done", "data", "failure")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.data: bytes | None = None
        self.failure: BaseException | None = None


class BlockCache:
    """LRU by bytes held; `get` fetches through the cluster, `prefetch` fetches ahead."""

    def __init__(
        self, cluster: Cluster, capacity: int, nursery: trio.Nursery, max_prefetch: int
    ) -> None:
        self.cluster = cluster
        self._nursery = nursery
        self._blocks: CostBoundedLRU[bytes, bytes] = CostBoundedLRU(capacity)
        self._fetches: dict[bytes, _Fetch] = {}
        self._prefetch_slots = trio.Semaphore(max_prefetch)

    async def get(self, block_id: bytes, checksum: bytes) -> bytes:
        """The block's bytes; raises `Unavailable` when no replica can serve it."""
        data = self._blocks.get(block_id)
        if data is not None:
            return data
        fetch = self._fetches.get(block_id)
        if fetch is None:
            fetch = self._start(block_id)
            await self._fetch(block_id, checksum, fetch)
        else:
            await fetch.done.wait()
        if fetch.failure is not None:
            raise fetch.failure
        assert fetch.data is not None
        return fetch.data

    async def read(
        self, block_id: bytes, checksum: bytes, offset: int, length: int
    ) -> bytes | memoryview:
        """`length` bytes of the block at `offset` (within it): a view of the block, from the
        cache or a fetch of the whole block under way, else only those bytes from a node, not
        kept (a random read; the kernel keeps the pages it asked for)."""
        if block_id in self._blocks or block_id in self._fetches:
            return memoryview(await self.get(block_id, checksum))[offset : offset + length]
        return await self.cluster.get_block(block_id, checksum, (offset, length))

    def prefetch(self, block_id: bytes, checksum: bytes) -> None:
        """Fetch a block in the background if it is not cached and a prefetch slot is free."""
        if block_id in self._blocks or block_id in self._fetches:
            return
        try:
            self._prefetch_slots.acquire_nowait()
        except trio.WouldBlock:
            return
        fetch = self._start(block_id)
        self._nursery.start_soon(self._prefetch, block_id, checksum, fetch, name="readahead")

    async def _prefetch(self, block_id: bytes, checksum: bytes, fetch: _Fetch) -> None:
        try:
            await self._fetch(block_id, checksum, fetch)
        finally:
            self._prefetch_slots.release()

    def _start(self, block_id: bytes) -> _Fetch:
        fetch = self._fetches[block_id] = _Fetch()
        return fetch

    async def _fetch(self, block_id: bytes, checksum: bytes, fetch: _Fetch) -> None:
        try:
            fetch.data = await self.cluster.get_block(block_id, checksum)
            self.insert(block_id, fetch.data)
        except (Unavailable, NodeError) as exc:
            fetch.failure = exc
        finally:
            if fetch.data is None and fetch.failure is None:
                # The fetching task was cancelled: readers sharing it must not wait forever.
                fetch.failure = Unavailable(f"block {block_id.hex()} (fetch cancelled)")
            del self._fetches[block_id]
            fetch.done.set()

    def insert(self, block_id: bytes, data: bytes) -> None:
        """Keep a block's bytes (fetched, or just written by this client)."""
        self._blocks.put(block_id, data, len(data))
