"""The leader's bookkeeping of recalls: who polled when, what each holder is asked for."""

from __future__ import annotations

from ringfs.node.meta.delegations import Recalls

A, B = b"a", b"b"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_holder_is_asked_once_per_new_directory() -> None:
    recalls = Recalls(Clock())
    assert recalls.want(A, [5, 6])
    assert not recalls.want(A, [6])  # nothing new: no need to wake its poll again
    assert recalls.want(A, [7])
    assert recalls.wanted(A) == {5, 6, 7}
    assert recalls.wanted(B) == set()
    recalls.still_held(A, [6])
    assert recalls.wanted(A) == {6}
    recalls.still_held(A, [])
    assert recalls.wanted(A) == set()


def test_a_holder_expires_only_after_polling_stops_for_the_whole_expiry() -> None:
    clock = Clock()
    recalls = Recalls(clock, expiry=3.0)
    recalls.seen(A)
    clock.now += 2.0
    assert not recalls.expired(A, waiting_since=clock.now)
    clock.now += 1.5  # 3.5 s since A's last poll, but the wait began 1.5 s ago
    assert not recalls.expired(A, waiting_since=clock.now - 1.5)
    assert recalls.expired(A, waiting_since=clock.now - 3.2)
    recalls.seen(A)
    assert not recalls.expired(A, waiting_since=0.0)
    # A client never heard from (a leader that just took over) gets the expiry from the wait.
    assert not recalls.expired(B, waiting_since=clock.now - 2.9)
    assert recalls.expired(B, waiting_since=clock.now - 3.1)
    recalls.want(B, [1])
    recalls.forget(B)
    assert recalls.wanted(B) == set()


def test_silence_counts_from_the_last_poll_or_from_when_the_leader_began() -> None:
    clock = Clock()
    recalls = Recalls(clock)
    recalls.seen(A)
    clock.now += 50.0
    assert recalls.silent(A, since=0.0) == 50.0
    assert recalls.silent(A, since=clock.now - 10.0) == 10.0  # a leader of 10 s
    assert recalls.silent(B, since=clock.now - 7.0) == 7.0  # never heard of since
