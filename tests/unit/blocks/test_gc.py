"""The garbage collector's decisions: the grace period, batches, and what may be forgotten."""

from __future__ import annotations

from ringfs.node.blocks.gc import BATCH, GarbageClock, deleted_everywhere, interval

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def test_an_id_is_due_only_after_its_grace_period() -> None:
    clock = GarbageClock(grace=60)
    clock.observe([A], now=100)
    clock.observe([A, B], now=130)
    assert clock.due(159) == []
    assert clock.due(160) == [A]
    assert clock.due(190) == [A, B]


def test_ids_no_longer_listed_are_dropped_and_restart_if_listed_again() -> None:
    clock = GarbageClock(grace=60)
    clock.observe([A, B], now=0)
    clock.observe([B], now=10)
    clock.observe([A, B], now=20)
    assert clock.due(60) == [B]
    assert clock.due(80) == [A, B]


def test_forgotten_ids_are_counted() -> None:
    clock = GarbageClock(grace=0)
    clock.observe([A, B, C], now=0)
    clock.forgotten([A, C])
    assert clock.due(0) == [B]
    assert clock.collected == 2


def test_losing_the_lead_restarts_every_clock() -> None:
    clock = GarbageClock(grace=60)
    clock.observe([A], now=0)
    clock.reset()
    clock.observe([A], now=50)
    assert clock.due(100) == []
    assert clock.due(110) == [A]


def test_one_batch_at_a_time_oldest_first() -> None:
    clock = GarbageClock(grace=1)
    ids = [i.to_bytes(16, "big") for i in range(BATCH + 10)]
    clock.observe(ids, now=0)
    assert clock.due(5) == ids[:BATCH]


def test_only_ids_every_node_confirmed_are_forgotten() -> None:
    confirmed = {"n1": {A, B}, "n2": {A, B, C}, "n3": {B, C}}
    assert deleted_everywhere([A, B, C], confirmed, ["n1", "n2", "n3"]) == [B]
    # A node that never answered confirmed nothing.
    assert deleted_everywhere([A, B], {"n1": {A, B}}, ["n1", "n2"]) == []


def test_interval_follows_the_grace_period_within_bounds() -> None:
    assert interval(1) == 0.5
    assert interval(0.1) == 0.2
    assert interval(60) == 10.0
