"""The change feed: what each applied command touched, kept in order for mounts' caches, and
the reset that tells a mount it fell too far behind."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import (
    ROOT_INO,
    Attr,
    Entry,
    GetAttr,
    Init,
    Mkdir,
    Mknod,
    OpenSession,
    Rename,
    Setattr,
    SetXattr,
    Unlink,
)
from ringfs.node.meta.feed import Change, ChangeFeed, Changes
from ringfs.node.meta.replica import MetaMachine
from ringfs.node.raft.core import SnapshotMeta
from tests.unit.meta.test_machine import command, machine, mkdir

__all__ = ["machine"]  # the fixture

ME = b"m" * 16


def change(index: int, ino: int = 5) -> Change:
    return Change(index, ME, index, (ino,), ((ROOT_INO, b"x"),))


def test_a_feed_hands_out_what_came_after_an_index_in_order() -> None:
    feed = ChangeFeed(applied=10)
    feed.add([change(11), change(13)], applied=13)
    feed.add([], applied=14)  # entries that changed nothing still move the feed on
    assert feed.since(10) == Changes(14, False, (change(11), change(13)))
    assert feed.since(11) == Changes(14, False, (change(13),))
    assert feed.since(14) == Changes(14, False, ())


def test_a_page_ends_at_its_last_record() -> None:
    feed = ChangeFeed(applied=0)
    feed.add([change(i) for i in range(1, 11)], applied=12)
    page = feed.since(0, limit=4)
    assert page == Changes(4, False, tuple(change(i) for i in range(1, 5)))
    assert feed.since(page.upto, limit=100).records == tuple(change(i) for i in range(5, 11))


def test_asking_from_before_what_the_feed_holds_resets() -> None:
    feed = ChangeFeed(applied=100, limit=3)
    assert feed.since(99) == Changes(100, True, ())  # before this member's start
    feed.add([change(i) for i in range(101, 106)], applied=105)
    assert feed.since(101).reset  # the change at 102 was dropped to make room
    assert feed.since(102) == Changes(105, False, (change(103), change(104), change(105)))
    assert feed.since(106).reset  # from the future: not a state this member can vouch for


def test_a_restart_forgets_everything_before_the_new_state() -> None:
    feed = ChangeFeed(applied=0)
    feed.add([change(1), change(2)], applied=2)
    feed.restart(applied=50)
    assert feed.since(2).reset
    assert feed.since(50) == Changes(50, False, ())


async def test_waiting_returns_once_something_after_the_index_applied() -> None:
    feed = ChangeFeed(applied=7)
    await feed.wait_after(6)  # already there: at once
    with trio.move_on_after(0.05) as idle:
        await feed.wait_after(7)
    assert idle.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.wait_after, 7)
        await trio.testing.wait_all_tasks_blocked()
        feed.add([change(8)], applied=8)
    assert feed.applied == 8


async def test_a_clients_own_changes_are_no_news_to_it() -> None:
    other = b"o" * 16
    feed = ChangeFeed(applied=10)
    feed.add([change(11), change(12)], applied=12)
    assert feed.news_after(10)
    assert not feed.news_after(10, mine=ME)
    with trio.move_on_after(0.05) as idle:
        await feed.wait_after(10, mine=ME)
    assert idle.cancelled_caught
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.wait_after, 10, ME)
        await trio.testing.wait_all_tasks_blocked()
        feed.add([change(13)], applied=13)  # its own again: still waiting
        await trio.testing.wait_all_tasks_blocked()
        assert nursery.child_tasks
        feed.add([Change(14, other, 1, (5,), ())], applied=14)
    assert feed.news_after(13, mine=ME)
    # A system command (no client) is news to everyone.
    feed.add([Change(15, None, None, (5,), ())], applied=15)
    assert feed.news_after(14, mine=ME)


@pytest.mark.parametrize("wake", ["nudge", "restart"])
async def test_a_nudge_or_a_restart_wakes_a_waiting_client(wake: str) -> None:
    feed = ChangeFeed(applied=10, limit=2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(feed.wait_after, 10, ME)
        await trio.testing.wait_all_tasks_blocked()
        if wake == "nudge":
            feed.nudge()
        else:
            feed.restart(applied=20)
    feed.add([change(i) for i in range(21, 24)], applied=23)  # 21 dropped to make room
    assert feed.news_after(20, mine=ME)  # a reset to tell, own changes or not


def test_changes_travel_and_malformed_ones_are_refused() -> None:
    answer = Changes(9, False, (change(8), Change(9, None, None, (), ((3, b"\xff"),))))
    assert Changes.from_wire(answer.to_wire()) == answer
    for bad in (
        [9, False, [[8, ME, ["x"], []]]],
        [9, False, [[8, "str", [], []]]],
        [9, False, [[8, ME, [], [[1, "name"]]]]],
        [9, "no", []],
        [9, False, [[8, ME]]],
        "junk",
    ):
        with pytest.raises(NodeError):
            Changes.from_wire(bad)


# --- what each command touched (MetaMachine -> feed) ------------------------------------------


def applied(machine: MetaMachine, index: int, *entries: Entry) -> list[Change]:
    before = machine.feed.applied
    results = machine.apply([command(index + i, e) for i, e in enumerate(entries)])
    assert all(r.outcome.error is None for r in results), results
    return list(machine.feed.since(before).records)


def test_each_command_notes_the_inodes_and_names_it_changed(machine: MetaMachine) -> None:
    opened = Entry(OpenSession(), ME)  # changes nothing in the namespace: no record
    [made] = applied(machine, 1, opened, Entry(Mkdir(ROOT_INO, b"d", 0o755, 0, 0, 2), ME, 1, None))
    d = 2  # the first inode after the root
    assert made == Change(2, ME, 1, (ROOT_INO, d), ((ROOT_INO, b"d"),))
    f = 3
    [created, chmod, xattr] = applied(
        machine,
        3,
        Entry(Mknod(d, b"f", 0o100644, 0, 0, 0, 3)),
        Entry(Setattr(f, 0o600, None, None, None, None, None, 4)),
        Entry(SetXattr(f, b"user.k", b"v", 0, 5)),
    )
    assert (created.inodes, created.entries) == ((d, f), ((d, b"f"),))
    assert (created.client_id, created.seq) == (None, None)
    assert (chmod.inodes, chmod.entries) == ((f,), ())
    assert (xattr.inodes, xattr.entries) == ((f,), ())
    [moved] = applied(machine, 6, Entry(Rename(d, b"f", ROOT_INO, b"g", 0, 6)))
    assert moved.inodes == (ROOT_INO, d, f)
    assert moved.entries == ((ROOT_INO, b"g"), (d, b"f"))
    [gone] = applied(machine, 7, Entry(Unlink(ROOT_INO, b"g", 7)))
    assert (gone.inodes, gone.entries) == ((ROOT_INO, f), ((ROOT_INO, b"g"),))


def test_a_failed_command_changed_nothing(machine: MetaMachine) -> None:
    machine.apply([mkdir(2, b"a")])
    before = machine.feed.applied
    [applied] = machine.apply([mkdir(3, b"a")])  # EEXIST
    assert applied.outcome.error == "EEXIST"
    assert machine.feed.since(before) == Changes(3, False, ())


def test_the_xattr_count_is_in_the_attributes(machine: MetaMachine) -> None:
    applied(machine, 2, Entry(Mknod(ROOT_INO, b"f", 0o100644, 0, 0, 0, 2)))
    applied(machine, 3, Entry(SetXattr(2, b"user.a", b"1", 0, 3)))
    applied(machine, 4, Entry(SetXattr(2, b"user.b", b"2", 0, 4)))
    attr: Attr = machine.state.query(GetAttr(2))
    assert attr.xattrs == 2


def test_a_snapshot_install_restarts_the_feed(machine: MetaMachine, tmp_path: Path) -> None:
    (tmp_path / "other").mkdir()
    other = MetaMachine(tmp_path / "other" / "meta.db")
    other.apply([command(1, Entry(Init(4096, 0, 0, 1))), mkdir(2, b"a"), mkdir(3, b"b")])
    index, image = other.snapshot()
    machine.apply([mkdir(2, b"z")])
    machine.restore(SnapshotMeta(index, 1, ("n1",)), image)
    assert machine.feed.since(2).reset
    assert machine.feed.since(3) == Changes(3, False, ())
