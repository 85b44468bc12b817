"""An open directory reads the leader one page at a time, whatever slices the kernel asks for,
and reads it again from the start on a rewind; a directory the cache can list whole is listed
from there."""

from __future__ import annotations

from typing import Any, cast

from ringfs.fs.metadata import READDIR_PAGE, DirListing, Metadata
from ringfs.node.meta.commands import Attr, DirEntry


class Leader:
    """Answers ReadDir pages of a directory of `count` entries at offsets 3, 4, ..."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.asked: list[int] = []
        # What the cache would list whole (`Metadata.listing`), if anything.
        self.cached: list[DirEntry] | None = None

    def listing(self, ino: int) -> list[DirEntry] | None:
        return self.cached

    async def readdir(self, ino: int, after: int, limit: int) -> list[DirEntry]:
        self.asked.append(after)
        offsets = [o for o in range(3, 3 + self.count) if o > after][:limit]
        return [
            DirEntry(o, b"e%d" % o, Attr(o, 0o100644, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
            for o in offsets
        ]


async def read_all(listing: DirListing, leader: Leader, slice_size: int) -> list[int]:
    """What the kernel does: ask from the last offset it got, `slice_size` entries at a time."""
    seen: list[int] = []
    after = 0
    while True:
        entries, more = await listing.read(cast(Metadata, leader), after)
        taken = entries[:slice_size]
        seen += [e.offset for e in taken]
        if not taken or (len(taken) == len(entries) and not more):
            return seen
        after = taken[-1].offset


async def test_slices_of_a_page_cost_one_query() -> None:
    leader = Leader(READDIR_PAGE * 2 + 10)
    listing = DirListing(1)
    seen = await read_all(listing, leader, slice_size=25)
    assert seen == list(range(3, 3 + READDIR_PAGE * 2 + 10))
    assert len(leader.asked) == 3


async def test_a_rewind_reads_again() -> None:
    leader = Leader(5)
    listing = DirListing(1)
    assert await read_all(listing, leader, 2) == [3, 4, 5, 6, 7]
    leader.count = 6  # a new entry, after the first listing
    assert await read_all(listing, leader, 2) == [3, 4, 5, 6, 7, 8]
    assert leader.asked == [0, 0]


async def test_an_empty_directory() -> None:
    leader = Leader(0)
    listing: Any = DirListing(1)
    assert await listing.read(leader, 0) == ([], False)


async def test_a_directory_the_cache_lists_whole_is_paged_through_that_copy() -> None:
    leader = Leader(READDIR_PAGE * 2)
    leader.cached = [
        DirEntry(o, b"c%d" % o, Attr(o, 0o100644, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0))
        for o in range(1, READDIR_PAGE + 1)  # exactly a page: no more follow all the same
    ]
    listing = DirListing(1)
    assert await read_all(listing, leader, slice_size=25) == list(range(1, READDIR_PAGE + 1))
    assert leader.asked == []
    leader.cached = None  # no longer listed whole: a rewind asks the leader
    assert len(await read_all(listing, leader, slice_size=25)) == READDIR_PAGE * 2
    assert leader.asked == [0, READDIR_PAGE + 2, 2 * READDIR_PAGE + 2]
