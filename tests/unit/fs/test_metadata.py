"""The mount's metadata calls: a command forgets what it touched and keeps what it answered."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, cast

import pytest
import trio
import trio.testing

from ringfs.fs.cluster import Answer, Cluster
from ringfs.fs.metacache import MetaCache
from ringfs.fs.metadata import Metadata
from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import (
    RENAME_EXCHANGE,
    ROOT_INO,
    Attr,
    Command,
    Mkdir,
    Mknod,
    Rename,
    Setattr,
    Unlink,
)
from ringfs.node.meta.feed import Change, Changes
from ringfs.node.meta.watches import WATCH_TIME


def attr(ino: int, size: int = 0) -> Attr:
    return Attr(ino, 0o100644, 1, 0, 0, 0, size, 0, 1, 1, 1, 1, 0)


class Leader:
    """Answers each command with the next prepared answer (a bare result comes with its own
    attributes, if it is an Attr), after `during` ran (what the change feed delivers while the
    command is on its way)."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.seq = 0
        self.during: Callable[[], object] = lambda: None
        self.session_listeners: list[Callable[[bytes], None]] = []

    def take_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def meta_command(self, command: Command, seq: int | None = None) -> Answer:
        self.during()
        return answer(self.results.pop(0))


def answer(result: Any) -> Answer:
    if isinstance(result, Answer):
        return result
    return Answer(result, [result] if isinstance(result, Attr) else [])


def metadata(leader: Leader) -> Metadata:
    cache = MetaCache(b"m" * 16, clock=lambda: 0.0)
    cache.apply(Changes(1, False, ()), sent_at=0.0)
    # Every command to the leader, one by one (`test_writebehind` covers the others).
    return Metadata(cast(Cluster, leader), cache, write_behind=False)


async def test_a_new_file_is_known_by_name_and_attributes() -> None:
    meta = metadata(Leader(attr(7)))
    await meta.apply(Mknod(ROOT_INO, b"new", 0o100644, 0, 0, 0, 0))
    assert meta.cache.lookup(ROOT_INO, b"new") == attr(7)
    assert meta.without_xattrs(7)  # the kernel's security.capability probe before a write


async def test_a_change_replaces_what_was_cached() -> None:
    meta = metadata(Leader(attr(7, size=10)))
    meta.cache.keep_attr(attr(7), meta.cache.stamp())
    await meta.apply(Setattr(7, None, None, None, 10, None, None, 0))
    assert meta.cache.attr(7) == attr(7, size=10)


def dir_attr(ino: int) -> Attr:
    return Attr(ino, 0o040755, 2, 0, 0, 0, 4096, 8, 1, 1, 1, 1, 0)


async def test_a_directory_this_mount_made_knows_which_names_do_not_exist() -> None:
    meta = metadata(Leader(dir_attr(5), attr(6), attr(6), None))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))
    assert meta.cache.known_missing(5, b"anything")
    await meta.apply(Mknod(5, b"a", 0o100644, 0, 0, 0, 0))
    assert not meta.cache.known_missing(5, b"a")
    assert meta.cache.known_missing(5, b"b")
    with pytest.raises(NodeError, match="ENOENT"):
        await meta.lookup(5, b"b")  # answered without the leader
    await meta.apply(Rename(5, b"a", 5, b"b", 0, 0))  # answers the replaced inode: none
    assert meta.cache.known_missing(5, b"a")
    assert meta.cache.inode_of((5, b"b")) == 6
    await meta.apply(Unlink(5, b"b", 0))
    assert meta.cache.known_missing(5, b"b")


async def test_a_change_by_another_client_makes_a_directory_unknown_again() -> None:
    meta = metadata(Leader(dir_attr(5)))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))
    own = Change(2, meta.cache.client_id, 1, (5,), ((5, b"x"),))
    meta.cache.apply(Changes(2, False, (own,)), sent_at=0.0)
    assert meta.cache.known_missing(5, b"y")  # its own change: already known
    other = Change(3, b"o" * 16, 1, (5,), ((5, b"x"),))
    meta.cache.apply(Changes(3, False, (other,)), sent_at=0.0)
    assert not meta.cache.known_missing(5, b"y")


async def test_a_failed_command_makes_its_directories_unknown() -> None:
    meta = metadata(Leader(dir_attr(5)))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))

    class Refusing(Leader):
        async def meta_command(self, command: Command, seq: int) -> Answer:
            raise NodeError("EEXIST", "")

    meta.cluster = cast(Cluster, Refusing())
    with pytest.raises(NodeError):
        await meta.apply(Mknod(5, b"a", 0o100644, 0, 0, 0, 0))
    assert not meta.cache.known_missing(5, b"b")


async def test_a_rename_from_a_name_not_cached_makes_the_target_directory_unknown() -> None:
    meta = metadata(Leader(dir_attr(5), None))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))
    meta.cache.mark_complete({ROOT_INO})
    await meta.apply(Rename(ROOT_INO, b"elsewhere", 5, b"here", 0, 0))
    assert not meta.cache.known_missing(5, b"other")
    assert meta.cache.known_missing(ROOT_INO, b"elsewhere")


async def test_an_exchange_swaps_the_names() -> None:
    meta = metadata(Leader(dir_attr(5), attr(6), attr(7), None))
    await meta.apply(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 0))
    await meta.apply(Mknod(5, b"a", 0o100644, 0, 0, 0, 0))
    await meta.apply(Mknod(5, b"b", 0o100644, 0, 0, 0, 0))
    await meta.apply(Rename(5, b"a", 5, b"b", RENAME_EXCHANGE, 0))
    assert (meta.cache.inode_of((5, b"a")), meta.cache.inode_of((5, b"b"))) == (7, 6)
    assert meta.cache.known_missing(5, b"c")


async def test_the_attributes_the_leader_sent_back_are_kept() -> None:
    """The directory a name was made in: the kernel asks for it before the next create."""
    parent = dataclasses.replace(dir_attr(5), nlink=3, mtime_ns=50, ctime_ns=50)
    made = dataclasses.replace(dir_attr(9), ctime_ns=50)
    meta = metadata(Leader(Answer(made, [parent, made])))
    meta.cache.keep_attr(dir_attr(5), meta.cache.stamp())
    await meta.apply(Mkdir(5, b"sub", 0o755, 0, 0, 0))
    assert (meta.cache.attr(5), meta.cache.attr(9)) == (parent, made)
    assert meta.cache.lookup(5, b"sub") == made


def feed(meta: Metadata, *records: Change) -> None:
    meta.cache.apply(Changes(records[-1].index, False, records), sent_at=0.0)


UNLINKED = dataclasses.replace(attr(10), nlink=0, ctime_ns=60)
#: The directory after the unlink.
EMPTIED = dataclasses.replace(dir_attr(5), mtime_ns=60, ctime_ns=60)
UNLINK = Answer(UNLINKED, [EMPTIED, UNLINKED])


async def test_the_own_record_of_an_unlink_spares_what_its_answer_kept() -> None:
    """`rm -r`: the kernel asks for the directory's attributes before each next unlink."""
    meta = metadata(Leader(UNLINK))
    meta.cache.keep_attr(dir_attr(5), meta.cache.stamp())
    await meta.apply(Unlink(5, b"gone", 0))
    feed(meta, Change(2, meta.cache.client_id, 1, (5, 10), ((5, b"gone"),)))
    assert (meta.cache.attr(5), meta.cache.attr(10)) == (EMPTIED, UNLINKED)


async def test_the_own_record_may_come_before_the_answer() -> None:
    leader = Leader(UNLINK)
    meta = metadata(leader)
    meta.cache.keep_attr(dir_attr(5), meta.cache.stamp())
    leader.during = lambda: feed(meta, Change(2, meta.cache.client_id, 1, (5, 10), ()))
    await meta.apply(Unlink(5, b"gone", 0))
    assert meta.cache.attr(5) == EMPTIED


async def test_an_answer_is_not_kept_over_another_clients_change_made_meanwhile() -> None:
    leader = Leader(attr(7, size=10))
    meta = metadata(leader)
    leader.during = lambda: feed(meta, Change(3, b"o" * 16, 9, (7,), ()))
    await meta.apply(Setattr(7, None, None, None, 10, None, None, 0))
    assert meta.cache.attr(7) is None  # the other change may be the newer one


async def test_an_own_record_drops_what_its_answer_did_not_keep() -> None:
    meta = metadata(Leader(attr(7, size=10)))
    meta.cache.keep_attr(attr(8), meta.cache.stamp())
    await meta.apply(Setattr(7, None, None, None, 10, None, None, 0))
    feed(meta, Change(2, meta.cache.client_id, 1, (7, 8), ()))
    assert (meta.cache.attr(7), meta.cache.attr(8)) == (attr(7, size=10), None)


async def test_an_older_answer_never_replaces_a_newer_one_of_the_same_mount() -> None:
    first_may_answer = trio.Event()

    class Slow(Leader):
        async def meta_command(self, command: Command, seq: int) -> Answer:
            result = self.results.pop(0)
            if seq == 1:
                await first_may_answer.wait()
            return answer(result)

    meta = metadata(Slow(attr(5, size=1), attr(5, size=2)))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(meta.apply, Setattr(5, None, None, None, 1, None, None, 0))
        await trio.testing.wait_all_tasks_blocked()
        await meta.apply(Setattr(5, None, None, None, 2, None, None, 0))
        first_may_answer.set()
    assert meta.cache.attr(5) != attr(5, size=1)
    me = meta.cache.client_id
    feed(meta, Change(2, me, 1, (5,), ()), Change(3, me, 2, (5,), ()))
    assert meta.cache.attr(5) in (None, attr(5, size=2))


async def test_an_open_keeps_the_attributes_it_read() -> None:
    """Close-to-open: the open reads the file again; a stat after it shows that file, even
    before the feed tells of the other client's change."""

    class Reading(Leader):
        async def read_chunks(self, ino: int, known: Any = None) -> tuple[Attr, list[Any], int]:
            return attr(ino, size=20), [], 0

    meta = metadata(Reading())
    meta.cache.keep_attr(attr(7, size=10), meta.cache.stamp())
    await meta.read_chunks(7)
    assert meta.cache.attr(7) == attr(7, size=20)


class Watching(Leader):
    """Reads a file's map as the leader of term 3 would, registering the watch; counts reads."""

    def __init__(self, *results: Any) -> None:
        super().__init__(*results)
        self.reads = 0
        self.during_read: Callable[[], object] = lambda: None

    async def read_chunks(self, ino: int, known: Any = None) -> tuple[Attr, list[Any], int]:
        self.reads += 1
        self.during_read()
        if known is not None and known[0] == 1:
            return attr(ino, size=20), known[1], 3
        return attr(ino, size=20), ["map"], 3


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def watching_metadata(leader: Leader, clock: Clock) -> Metadata:
    cache = MetaCache(b"m" * 16, clock=clock)
    cache.apply(Changes(1, False, (), term=3), sent_at=clock.now)
    return Metadata(cast(Cluster, leader), cache, write_behind=False)


async def watched_file() -> tuple[Watching, Clock, Metadata]:
    """A mount that read file 7's map (version 1) and so watches it."""
    leader, clock = Watching(), Clock()
    meta = watching_metadata(leader, clock)
    await meta.read_chunks(7, (1, ["map"]))
    return leader, clock, meta


async def test_a_watched_file_opens_again_from_what_the_mount_kept() -> None:
    leader, clock = Watching(), Clock()
    meta = watching_metadata(leader, clock)
    kept = (1, ["map"])
    assert await meta.read_chunks(7, kept) == (attr(7, size=20), ["map"])
    assert await meta.read_chunks(7, kept) == (attr(7, size=20), ["map"])
    assert leader.reads == 1  # the second open asked nobody


async def test_another_clients_change_ends_the_watch() -> None:
    leader, clock, meta = await watched_file()
    feed(meta, Change(2, b"other", 1, (7,), ()))
    await meta.read_chunks(7, (1, ["map"]))
    assert leader.reads == 2


async def test_a_change_heard_while_the_read_was_on_its_way_ends_the_watch() -> None:
    leader, clock = Watching(), Clock()
    meta = watching_metadata(leader, clock)
    leader.during_read = lambda: feed(meta, Change(2, b"other", 1, (7,), ()))
    await meta.read_chunks(7, (1, ["map"]))
    leader.during_read = lambda: None
    await meta.read_chunks(7, (1, ["map"]))
    assert leader.reads == 2


async def test_a_watch_lasts_its_time_from_the_request() -> None:
    leader, clock, meta = await watched_file()
    while clock.now < WATCH_TIME:  # the feed answers all along
        assert meta.cache.watching(7)
        clock.now += 0.25
        meta.cache.apply(Changes(1, False, (), term=3), sent_at=clock.now)
    assert not meta.cache.watching(7)


@pytest.mark.parametrize("why", ["lease", "term", "reset"])
async def test_watches_end_with_the_lease_a_new_leader_or_a_reset(why: str) -> None:
    leader, clock, meta = await watched_file()
    if why == "lease":
        clock.now = 1.0  # the lease ran out
    else:
        # The feed goes on, from another leader or having lost track: the watch is gone,
        # even when the term comes back (a leader's watches die with its term).
        meta.cache.apply(Changes(1, why == "reset", (), term=4), sent_at=clock.now)
        meta.cache.apply(Changes(1, False, (), term=3), sent_at=clock.now)
        meta.cache.keep_attr(attr(7, size=20), meta.cache.stamp())
    await meta.read_chunks(7, (1, ["map"]))
    assert leader.reads == 2


async def test_a_gap_in_the_feed_ends_the_watches_for_good() -> None:
    """The leader stops waiting for a mount whose lease ran out: the mount's watches from
    before must not come back with the next answer."""
    leader, clock, meta = await watched_file()
    clock.now = 1.0
    meta.cache.apply(Changes(1, False, (), term=3), sent_at=clock.now)
    assert not meta.cache.watching(7)


async def test_an_own_command_answered_with_the_term_is_watched() -> None:
    leader, clock = Watching(Answer(attr(7, size=20), [attr(7, size=20)], 3)), Clock()
    meta = watching_metadata(leader, clock)
    await meta.apply(Setattr(7, None, None, None, 20, None, None, 0))
    assert meta.cache.watching(7)
    assert await meta.read_chunks(7, (1, ["mine"])) == (attr(7, size=20), ["mine"])
    assert leader.reads == 0


async def test_a_map_of_another_version_is_read_again() -> None:
    leader, clock, meta = await watched_file()
    assert await meta.read_chunks(7, (2, ["old"])) == (attr(7, size=20), ["map"])
    assert leader.reads == 2


async def test_a_failed_poll_ends_the_lease_and_the_watches_at_once() -> None:
    """A revoked key, a lost leader: the mount answers nothing more from what it kept."""
    leader, clock, meta = await watched_file()
    meta.cache.lapse()
    assert not meta.cache.watching(7)
    meta.cache.apply(Changes(1, False, (), term=3), sent_at=clock.now)
    assert not meta.cache.watching(7)
