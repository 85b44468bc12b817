"""The leader's watches: which answers wait for which mounts to hear of a change, and how long."""

from __future__ import annotations

import pytest

from ringfs.node.meta.watches import TRUST_BOUND, WATCH_BOUND, Watches, watchable

M, W = b"m" * 16, b"w" * 16
#: Inodes from 100 on were made under this leader.
FRESH = 100


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def settled_leader() -> tuple[Watches, Clock]:
    """A leader past its first `TRUST_BOUND`, that both mounts polled just now."""
    clock = Clock()
    watches = Watches(3, FRESH, clock)
    clock.now = 10.0
    watches.polled(M, 0)
    watches.polled(W, 0)
    return watches, clock


def test_a_change_waits_until_every_other_watcher_heard_of_it() -> None:
    watches, _ = settled_leader()
    assert watches.watch(M, [7])
    watches.changed(5, W, [7], [7])
    assert watches.delay(5, W) > 0
    assert watches.awaits(M)
    watches.polled(M, 4)  # not yet past it
    assert watches.delay(5, W) > 0
    watches.polled(M, 5)
    assert watches.delay(5, W) == 0
    assert not watches.awaits(M)


def test_an_answer_waits_for_every_change_before_it() -> None:
    """A retried command's answer (applied again as a no-op) must not overtake its first."""
    watches, _ = settled_leader()
    watches.watch(M, [7])
    watches.changed(5, W, [7], [7])
    watches.changed(6, W, [8], [8])
    assert watches.delay(6, W) > 0
    assert watches.delay(4, W) == 0


def test_own_changes_and_unwatched_files_do_not_wait() -> None:
    watches, _ = settled_leader()
    watches.watch(M, [7])
    watches.changed(5, M, [7], [7])
    watches.changed(6, W, [8], [8])
    assert watches.delay(6, W) == 0
    assert watches.watching(M, [7])
    assert watches.watching(W, [8])


def test_a_change_ends_the_other_watches_of_the_file() -> None:
    watches, _ = settled_leader()
    watches.watch(M, [7])
    watches.changed(5, W, [7], [7])
    assert not watches.watching(M, [7])
    assert watches.watching(W, [7])
    watches.polled(M, 5)
    watches.changed(6, W, [7], [7])  # M no longer keeps it: nothing to wait for
    assert watches.delay(6, W) == 0


def test_a_mount_that_stops_polling_is_waited_for_until_its_trust_ran_out() -> None:
    watches, clock = settled_leader()
    watches.watch(M, [7])
    clock.now += 0.2
    watches.changed(5, W, [7], [7])
    assert watches.delay(5, W) == pytest.approx(TRUST_BOUND - 0.2)
    clock.now = 10.0 + TRUST_BOUND
    assert watches.delay(5, W) == 0


def test_a_system_command_ends_every_watch_of_what_it_changed() -> None:
    watches, _ = settled_leader()
    watches.watch(M, [7])
    watches.watch(W, [7])
    watches.changed(5, None, [7], [7])
    assert watches.awaits(M)  # its poll is answered at once
    assert not watches.watching(M, [7])
    assert not watches.watching(W, [7])


def test_an_answer_waits_for_its_own_clients_changes_only() -> None:
    watches, _ = settled_leader()
    watches.watch(M, [7])
    watches.changed(5, W, [7], [7])
    watches.changed(6, M, [8], [8])
    assert watches.delay(6, M) == 0
    assert watches.delay(6, W) > 0


def test_a_new_leader_holds_back_changes_of_older_files_only() -> None:
    clock = Clock()
    watches = Watches(3, FRESH, clock)
    watches.changed(5, W, [FRESH, FRESH + 1], [FRESH, FRESH + 1])
    assert watches.delay(5, W) == 0  # made under this leader: nobody watched them before
    watches.changed(6, M, [1, 7], [7])  # a file older than this lead
    assert watches.delay(6, W) == 0  # W's own changes were of new files
    assert watches.delay(6, M) == pytest.approx(TRUST_BOUND)
    watches.changed(7, W, [1, 101], [101])  # of before, only a directory whose names changed
    assert watches.delay(7, W) == 0
    clock.now = TRUST_BOUND
    assert watches.delay(6, M) == 0
    watches.changed(8, W, [7], [7])
    assert watches.delay(8, W) == 0


def test_no_room_refuses_the_watch() -> None:
    clock = Clock()
    watches = Watches(3, FRESH, clock, limit=2)
    watches.polled(M, 0)
    assert watches.watch(M, [1, 2])
    assert not watches.watch(W, [3])
    assert not watches.watching(W, [3])
    watches.changed(5, None, [1], [1])  # frees one
    assert watches.watch(W, [3])


def test_watches_expire_and_make_room() -> None:
    clock = Clock()
    watches = Watches(3, FRESH, clock, limit=2)
    watches.polled(M, 0)
    assert watches.watch(M, [1, 2])
    clock.now = WATCH_BOUND  # nobody touched them since: the mount no longer trusts them
    watches.polled(M, 0)
    watches.polled(W, 0)
    assert watches.watch(W, [3])
    assert not watches.watching(M, [1])
    watches.changed(5, W, [2], [2])
    assert watches.delay(5, W) == 0


def test_a_watch_registered_again_lasts_from_then() -> None:
    clock = Clock()
    watches = Watches(3, FRESH, clock)
    watches.watch(M, [1])
    clock.now = WATCH_BOUND - 1
    watches.watch(M, [1])
    clock.now = WATCH_BOUND + 1
    watches.polled(M, 0)
    watches.changed(5, W, [1], [1])
    assert watches.delay(5, W) > 0


def test_a_leader_that_stopped_leading_still_holds_answers_back_for_a_while() -> None:
    watches, clock = settled_leader()
    watches.watch(M, [7])
    assert not watches.end_lead()
    watches.changed(5, W, [7], [7], leading=False)  # applied as a follower, answered by it
    assert watches.delay(5, W) > 0
    assert not watches.watching(W, [7])  # only a leader registers
    clock.now += TRUST_BOUND
    assert watches.end_lead()
    assert watches.delay(5, W) == 0


def test_directories_whose_names_a_command_changed_are_not_watched() -> None:
    """A create in a directory two mounts share waits for nobody: nobody opens a directory."""
    watches, _ = settled_leader()
    made = watchable([1, 8], [(1, b"f")])  # M made file 8 in directory 1
    assert made == (8,)
    watches.changed(5, M, [1, 8], made)
    assert watches.watching(M, [8])
    assert not watches.watching(M, [1])
    watches.changed(6, W, [1, 9], (9,))
    assert watches.delay(6, W) == 0
