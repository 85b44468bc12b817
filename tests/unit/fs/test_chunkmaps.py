"""`ChunkMaps`: kept maps are bounded by bytes, least recently used out first."""

from __future__ import annotations

from ringfs.fs.chunkmaps import CHUNK_COST, ChunkMaps
from ringfs.node.meta.commands import Chunk


def inline(size: int) -> Chunk:
    data = bytes(size)
    return Chunk(0, b"b" * 16, size, b"c" * 16, data)


def cost(*chunks: Chunk) -> int:
    return CHUNK_COST * (len(chunks) + 1) + sum(len(c.data) + len(c.tail) for c in chunks)


def test_maps_are_kept_by_version() -> None:
    maps = ChunkMaps()
    assert maps.get(7) is None
    maps.put(7, 3, [inline(10)])
    assert maps.get(7) == (3, [inline(10)])
    maps.put(7, 4, [inline(20)])  # a newer map replaces it
    assert maps.get(7) == (4, [inline(20)])
    assert maps.held == cost(inline(20))
    maps.forget(7)
    assert (maps.get(7), maps.held) == (None, 0)


def test_the_least_recently_used_maps_go_first() -> None:
    maps = ChunkMaps(capacity=3 * cost(inline(1000)))
    for ino in (1, 2, 3):
        maps.put(ino, 1, [inline(1000)])
    assert maps.get(1) is not None  # 2 is now the oldest
    maps.put(4, 1, [inline(1000)])
    assert [ino for ino in (1, 2, 3, 4) if maps.get(ino)] == [1, 3, 4]
    assert maps.held == 3 * cost(inline(1000))


def test_a_map_larger_than_the_capacity_is_not_kept() -> None:
    maps = ChunkMaps(capacity=cost(inline(100)))
    maps.put(1, 1, [inline(100)])
    maps.put(2, 1, [inline(101)])
    assert (maps.get(1), maps.get(2)) == ((1, [inline(100)]), None)
