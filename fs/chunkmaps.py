"""Chunk maps of files this mount had open, to open them again without the map sent again.

An open must see every close that came before it, in any client. For a file whose map this mount
kept, an open takes the kept map as it is if the mount watches the file (the leader holds back
other clients' changes of it until this mount heard of them: `ringfs.node.meta.watches`), and
otherwise asks with the version the map is of: the leader sends no chunks while the file is
still at that version (`version` changes with every change of the data). A small file's bytes
ride in its map, so reading it again costs no round trip, or one that carries only its
attributes.

Maps are kept by bytes (the bytes the metadata keeps, plus a share for each chunk), least
recently used out first. An entry is only ever a hint: the watch or the leader's version decides.
"""

from __future__ import annotations

from ringfs.fs.lru import CostBoundedLRU
from ringfs.node.meta.commands import Chunk

#: What a chunk of a kept map costs besides the bytes it carries.
CHUNK_COST = 128
#: Bytes of maps a mount keeps by default.
CAPACITY = 32 << 20

KnownMap = tuple[int, list[Chunk]]


class ChunkMaps:
    """(version, chunk map) per inode, bounded by `capacity` bytes."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self._maps: CostBoundedLRU[int, KnownMap] = CostBoundedLRU(capacity)

    def get(self, ino: int) -> KnownMap | None:
        return self._maps.get(ino)

    def put(self, ino: int, version: int, chunks: list[Chunk]) -> None:
        cost = sum(CHUNK_COST + len(c.data) + len(c.tail) for c in chunks) + CHUNK_COST
        self._maps.put(ino, (version, chunks), cost)

    def forget(self, ino: int) -> None:
        self._maps.forget(ino)

    @property
    def held(self) -> int:
        """Bytes the kept maps cost."""
        return self._maps.held
