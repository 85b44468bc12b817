"""The mount's cache of names and attributes: used only while the feed is fresh, never keeps a
reply that a change overtook, forgets what the mount's own commands touch."""

from __future__ import annotations

import pytest

from ringfs.fs.metacache import AWAITED_LIMIT, MetaCache, touched
from ringfs.node.meta.commands import (
    ROOT_INO,
    Attr,
    Command,
    CommitChunks,
    Link,
    Mknod,
    Purge,
    Rename,
    Setattr,
    SetXattr,
    Unlink,
)
from ringfs.node.meta.feed import Change, Changes

ME, OTHER = b"m" * 16, b"o" * 16


def attr(ino: int, size: int = 0, xattrs: int = 0) -> Attr:
    return Attr(ino, 0o100644, 1, 0, 0, 0, size, 0, 1, 1, 1, 1, xattrs)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def cache(clock: Clock) -> MetaCache:
    cache = MetaCache(ME, clock)
    cache.apply(Changes(10, True, ()), sent_at=clock.now)
    return cache


def test_nothing_is_answered_before_the_feed_was_heard(clock: Clock) -> None:
    cache = MetaCache(ME, clock)
    cache.keep_entry(ROOT_INO, b"a", attr(5), cache.stamp())
    assert cache.lookup(ROOT_INO, b"a") is None
    cache.apply(Changes(3, False, ()), sent_at=clock.now)
    assert cache.lookup(ROOT_INO, b"a") == attr(5)


def test_the_cache_serves_until_the_lease_of_the_last_poll_runs_out(
    cache: MetaCache, clock: Clock
) -> None:
    cache.keep_entry(ROOT_INO, b"a", attr(5), cache.stamp())
    assert cache.lookup(ROOT_INO, b"a") == attr(5)
    assert cache.attr(5) == attr(5)
    clock.now += 0.99
    assert cache.attr(5) == attr(5)
    clock.now += 0.02
    assert cache.attr(5) is None
    assert cache.lookup(ROOT_INO, b"a") is None
    cache.apply(Changes(11, False, ()), sent_at=clock.now - 0.5)  # an answer renews it
    assert cache.attr(5) == attr(5)


def test_changes_from_the_feed_drop_what_they_touched(cache: MetaCache) -> None:
    cache.keep_entry(ROOT_INO, b"a", attr(5), cache.stamp())
    cache.keep_entry(ROOT_INO, b"b", attr(6), cache.stamp())
    cache.keep_entry(ROOT_INO, b"c", attr(7), cache.stamp())
    cache.keep_entry(ROOT_INO, b"d", attr(8), cache.stamp())
    foreign = cache.apply(
        Changes(
            14,
            False,
            (
                Change(11, OTHER, 1, (5,), ()),
                Change(12, OTHER, 2, (), ((ROOT_INO, b"b"),)),
                Change(13, ME, 1, (8,), ((ROOT_INO, b"d"),)),
            ),
        ),
        sent_at=100.0,
    )
    assert cache.attr(5) is None
    assert cache.lookup(ROOT_INO, b"a") is None  # its name is known, its attributes are not
    assert cache.lookup(ROOT_INO, b"b") is None
    assert cache.attr(6) == attr(6)
    assert cache.lookup(ROOT_INO, b"c") == attr(7)
    # This mount's own change: attributes go, but names were updated when it answered.
    assert cache.attr(8) is None
    assert cache.inode_of((ROOT_INO, b"d")) == 8
    assert cache.index == 14
    assert foreign == [([5], []), ([], [(ROOT_INO, b"b")])]  # the kernel hears of others' only


def test_a_reply_overtaken_by_a_change_is_not_kept(cache: MetaCache) -> None:
    stamp = cache.stamp()  # a lookup goes out...
    cache.apply(Changes(11, False, (Change(11, OTHER, 1, (5,), ((ROOT_INO, b"a"),)),)), 100.0)
    cache.keep_entry(ROOT_INO, b"a", attr(5), stamp)  # ...and its answer comes after the change
    assert cache.lookup(ROOT_INO, b"a") is None
    cache.keep_attr(attr(5), stamp)
    assert cache.attr(5) is None
    cache.keep_entry(ROOT_INO, b"a", attr(5, size=9), cache.stamp())  # asked after: kept
    assert cache.lookup(ROOT_INO, b"a") == attr(5, size=9)
    other = cache.stamp()
    cache.apply(Changes(12, False, (Change(12, OTHER, 2, (8,), ()),)), 100.0)
    cache.keep_attr(attr(6), other)  # a change to something else does not stop it
    assert cache.attr(6) == attr(6)


def test_own_commands_forget_names_and_the_inodes_they_led_to(cache: MetaCache) -> None:
    cache.keep_entry(ROOT_INO, b"a", attr(5), cache.stamp())
    cache.keep_attr(attr(ROOT_INO), cache.stamp())
    stamp = cache.stamp()
    cache.forget(*touched(Unlink(ROOT_INO, b"a", 0)))
    assert cache.lookup(ROOT_INO, b"a") is None
    assert cache.attr(5) is None
    assert cache.attr(ROOT_INO) is None
    cache.keep_entry(ROOT_INO, b"a", attr(5), stamp)  # a lookup sent before the unlink
    assert cache.lookup(ROOT_INO, b"a") is None


def test_an_own_record_spares_only_what_its_answer_kept(cache: MetaCache) -> None:
    cache.expect(1)
    cache.keep_attr(attr(5), cache.stamp())
    cache.keep_attr(attr(6), cache.stamp())
    cache.answered(1, [5])
    cache.apply(Changes(11, False, (Change(11, ME, 1, (5, 6), ()),)), 100.0)
    assert (cache.attr(5), cache.attr(6)) == (attr(5), None)
    # Once: a record naming the same command again (or one never awaited) drops.
    cache.apply(Changes(12, False, (Change(12, ME, 1, (5,), ()),)), 100.0)
    assert cache.attr(5) is None


def test_an_own_record_before_the_answer_leaves_it_to_the_answer(cache: MetaCache) -> None:
    cache.expect(1)
    cache.keep_attr(attr(5), cache.stamp())
    cache.keep_attr(attr(6), cache.stamp())
    before = cache.stamp()
    cache.apply(Changes(11, False, (Change(11, ME, 1, (5, 6), ()),)), 100.0)
    assert cache.may_keep(5, before)
    assert cache.may_keep(6, before)
    cache.answered(1, [5])  # the answer kept 5: 6 is dropped now
    assert (cache.attr(5), cache.attr(6)) == (attr(5), None)


def test_a_failed_own_command_drops_what_its_early_record_named(cache: MetaCache) -> None:
    cache.expect(1)
    cache.keep_attr(attr(5), cache.stamp())
    cache.apply(Changes(11, False, (Change(11, ME, 1, (5,), ()),)), 100.0)
    cache.answered(1, ())
    assert cache.attr(5) is None


def test_own_commands_awaited_stay_bounded(cache: MetaCache) -> None:
    """Answers that never come (a command given up on) do not pile up; a record that came
    early for an evicted command drops what it names."""
    cache.keep_attr(attr(5), cache.stamp())
    cache.expect(0)
    cache.apply(Changes(11, False, (Change(11, ME, 0, (5,), ()),)), 100.0)
    assert cache.attr(5) == attr(5)  # left to the answer
    for seq in range(1, AWAITED_LIMIT + 100):
        cache.expect(seq)
    assert len(cache._awaited) <= AWAITED_LIMIT
    assert cache.attr(5) is None


def test_another_clients_record_is_never_spared(cache: MetaCache) -> None:
    cache.expect(1)
    cache.keep_attr(attr(5), cache.stamp())
    cache.apply(Changes(11, False, (Change(11, OTHER, 1, (5,), ()),)), 100.0)
    assert cache.attr(5) is None


def test_a_reset_forgets_everything(cache: MetaCache) -> None:
    stamp = cache.stamp()
    cache.keep_entry(ROOT_INO, b"a", attr(5), stamp)
    cache.apply(Changes(500, True, ()), sent_at=100.0)
    assert cache.lookup(ROOT_INO, b"a") is None
    assert cache.attr(5) is None
    cache.keep_attr(attr(5), stamp)  # in flight across the reset
    assert cache.attr(5) is None


def test_the_oldest_go_first_when_full(clock: Clock) -> None:
    cache = MetaCache(ME, clock, limit=3)
    cache.apply(Changes(1, False, ()), sent_at=clock.now)
    for ino in (2, 3, 4):
        cache.keep_attr(attr(ino), cache.stamp())
    cache.keep_attr(attr(2, size=1), cache.stamp())  # used again: young
    cache.keep_attr(attr(5), cache.stamp())
    assert [cache.attr(i) is not None for i in (2, 3, 4, 5)] == [True, False, True, True]


@pytest.mark.parametrize(
    ("command", "inodes", "names"),
    [
        (Mknod(2, b"n", 0o100644, 0, 0, 0, 0), [2], [(2, b"n")]),
        (Link(7, 3, b"l", 0), [7, 3], [(3, b"l")]),
        (Rename(2, b"a", 3, b"b", 0, 0), [2, 3], [(2, b"a"), (3, b"b")]),
        (Purge((8, 9)), [8, 9], []),
        (Setattr(4, None, None, None, 0, None, None, 0), [4], []),
        (SetXattr(4, b"user.a", b"", 0, 0), [4], []),
        (CommitChunks(4, (), 0, None, None, None, None, 0), [4], []),
    ],
)
def test_what_a_command_touches(command: Command, inodes: list[int], names: object) -> None:
    assert touched(command) == (inodes, names)


def test_a_complete_directory_is_known_empty_once_its_last_name_goes(cache: MetaCache) -> None:
    cache.mark_complete([5])
    assert cache.known_empty(5)
    cache.keep_name(5, b"a", 6, cache.stamp())
    cache.keep_name(5, b"b", 7, cache.stamp())
    cache.keep_name(5, b"b", 8, cache.stamp())  # the same name again
    assert not cache.known_empty(5)
    cache.forget((), [(5, b"a")])
    cache.mark_complete([5])
    assert not cache.known_empty(5)
    cache.forget((), [(5, b"b")])
    assert not cache.known_empty(5)  # no longer complete: a name may be missing here
    cache.mark_complete([5])
    assert cache.known_empty(5)
    assert not cache.known_empty(9)  # not complete


def directory(ino: int) -> Attr:
    return Attr(ino, 0o040755, 2, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0)


def listed(cache: MetaCache, ino: int) -> list[tuple[bytes, int]] | None:
    entries = cache.listing(ino)
    return None if entries is None else [(name, attr.ino) for name, attr in entries]


def test_a_complete_directory_is_listed_with_its_parent(cache: MetaCache, clock: Clock) -> None:
    stamp = cache.stamp()
    cache.keep_attr(directory(ROOT_INO), stamp)
    cache.keep_entry(ROOT_INO, b"d", directory(5), stamp)
    cache.mark_complete([5])
    assert listed(cache, 5) == [(b".", 5), (b"..", ROOT_INO)]
    cache.keep_entry(5, b"b", attr(7), stamp)
    cache.keep_entry(5, b"a", attr(6), stamp)
    assert listed(cache, 5) == [(b".", 5), (b"..", ROOT_INO), (b"b", 7), (b"a", 6)]
    cache.forget((), [(5, b"b")])  # this mount's unlink: answered, so known again
    cache.mark_complete([5])
    assert listed(cache, 5) == [(b".", 5), (b"..", ROOT_INO), (b"a", 6)]
    clock.now += 2  # the feed went quiet: nothing is listed past the lease
    assert listed(cache, 5) is None


def test_a_listing_needs_every_name_and_attribute(cache: MetaCache) -> None:
    stamp = cache.stamp()
    cache.keep_attr(directory(ROOT_INO), stamp)
    cache.keep_entry(ROOT_INO, b"d", directory(5), stamp)
    cache.keep_entry(5, b"a", attr(6), stamp)
    assert listed(cache, 5) is None  # not complete
    cache.mark_complete([5])
    cache.keep_name(5, b"b", 7, stamp)  # a name whose attributes are not known
    assert listed(cache, 5) is None
    cache.keep_attr(attr(7), stamp)
    assert listed(cache, 5) == [(b".", 5), (b"..", ROOT_INO), (b"a", 6), (b"b", 7)]
    cache.apply(Changes(11, False, (Change(11, OTHER, 1, (5,), ((5, b"c"),)),)), 100.0)
    assert listed(cache, 5) is None  # another client named something here


def test_a_directory_whose_name_moved_has_a_new_parent(cache: MetaCache) -> None:
    stamp = cache.stamp()
    for ino in (ROOT_INO, 3):
        cache.keep_attr(directory(ino), stamp)
    cache.keep_entry(ROOT_INO, b"d", directory(5), stamp)
    cache.mark_complete([5])
    assert cache.parent(5) == ROOT_INO
    cache.forget((), [(ROOT_INO, b"d"), (3, b"e")])
    assert cache.parent(5) is None  # its name is not known: nor is `..`
    assert listed(cache, 5) is None
    cache.keep_name(3, b"e", 5, cache.stamp())
    cache.keep_attr(directory(5), cache.stamp())
    cache.mark_complete([5])
    assert listed(cache, 5) == [(b".", 5), (b"..", 3)]
    cache.keep_name(3, b"e", 9, cache.stamp())  # the name now leads elsewhere
    assert cache.parent(5) is None


def test_a_whole_listing_from_the_leader_makes_the_directory_complete(cache: MetaCache) -> None:
    page = [(b".", directory(5)), (b"..", directory(ROOT_INO)), (b"a", attr(6))]
    cache.keep_entry(ROOT_INO, b"d", directory(5), cache.stamp())
    cache.keep_listing(5, page, cache.stamp(), whole=False)  # a page: more may follow
    assert listed(cache, 5) is None
    cache.keep_listing(5, page, cache.stamp(), whole=True)
    assert listed(cache, 5) == [(b".", 5), (b"..", ROOT_INO), (b"a", 6)]
    assert cache.known_missing(5, b"b")


def test_a_listing_overtaken_by_a_change_in_its_directory_is_not_complete(
    cache: MetaCache,
) -> None:
    cache.keep_entry(ROOT_INO, b"d", directory(5), cache.stamp())
    stamp = cache.stamp()  # the readdir goes out; another client's create lands first
    cache.apply(Changes(11, False, (Change(11, OTHER, 1, (), ((5, b"new"),)),)), 100.0)
    page = [(b".", directory(5)), (b"..", directory(ROOT_INO)), (b"a", attr(6))]
    cache.keep_listing(5, page, stamp, whole=True)
    assert listed(cache, 5) is None
    assert not cache.known_missing(5, b"new")
