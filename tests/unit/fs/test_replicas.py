"""The order a block read tries its replicas in, by load (pure: no I/O, the time passed in)."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfs.fs.replicas import FLOOR, HALF_LIFE, ReadLoad

NODES = ("a:1", "b:1", "c:1")
DRAWS = 3000
NO_SUSPECTS = frozenset[str]().__contains__


def firsts(
    load: ReadLoad, now: float, weights: tuple[float, ...] = (1, 1, 1), draws: int = DRAWS
) -> Counter[str]:
    """How often each node comes first in `draws` orders at `now`."""
    replicas = list(zip(NODES, weights, strict=True))
    return Counter(load.order(replicas, now, NO_SUSPECTS)[0] for _ in range(draws))


def read(load: ReadLoad, address: str, took: float, at: float) -> None:
    """One read of `address` answered at `at` after `took` seconds."""
    load.sent(address, at - took)
    load.answered(address, at - took, at)


def measured(latencies: dict[str, float], seed: int = 0) -> ReadLoad:
    """A load that saw one read of each node take its latency, all answered at time 10."""
    load = ReadLoad(random.Random(seed))
    for address, took in latencies.items():
        read(load, address, took, 10)
    return load


@given(seed=st.integers(0, 2**32))
@settings(max_examples=10, deadline=None)
def test_equal_nodes_share_the_reads_evenly(seed: int) -> None:
    load = measured({address: 0.02 for address in NODES}, seed)
    counts = firsts(load, now=10)
    assert all(0.27 * DRAWS < counts[address] < 0.40 * DRAWS for address in NODES), counts


@given(seed=st.integers(0, 2**32))
@settings(max_examples=10, deadline=None)
def test_a_node_of_twice_the_weight_takes_twice_the_share(seed: int) -> None:
    load = measured({address: 0.02 for address in NODES}, seed)
    counts = firsts(load, now=10, weights=(2, 1, 1))
    assert 1.6 < counts["a:1"] / counts["b:1"] < 2.5, counts
    assert 1.6 < counts["a:1"] / counts["c:1"] < 2.5, counts


@given(seed=st.integers(0, 2**32))
@settings(max_examples=10, deadline=None)
def test_a_slow_node_is_chosen_rarely(seed: int) -> None:
    load = measured({"a:1": 0.02, "b:1": 0.02, "c:1": 0.5}, seed)
    counts = firsts(load, now=10)
    assert counts["c:1"] < 0.08 * DRAWS, counts
    assert counts["a:1"] > 0.4 * DRAWS, counts
    assert counts["b:1"] > 0.4 * DRAWS, counts


@given(seed=st.integers(0, 2**32))
@settings(max_examples=10, deadline=None)
def test_a_node_with_many_reads_out_is_chosen_rarely(seed: int) -> None:
    load = measured({address: 0.02 for address in NODES}, seed)
    for _ in range(20):
        load.sent("c:1", 10)
    counts = firsts(load, now=10)
    assert counts["c:1"] < 0.08 * DRAWS, counts


def test_a_read_out_for_long_costs_as_much_as_its_age() -> None:
    load = measured({address: 0.02 for address in NODES})
    load.sent("c:1", 10)  # and the node hangs: nothing comes back
    assert load.cost("c:1", 10) == pytest.approx(2 * 0.02)
    assert load.cost("c:1", 13) == pytest.approx(2 * 3.0)
    assert firsts(load, now=13)["c:1"] < 0.02 * DRAWS


@given(seed=st.integers(0, 2**32))
@settings(max_examples=10, deadline=None)
def test_a_node_that_recovers_is_chosen_again_once_its_estimate_fades(seed: int) -> None:
    load = measured({"a:1": 0.02, "b:1": 0.02, "c:1": 1.0}, seed)
    assert firsts(load, now=10)["c:1"] < 0.05 * DRAWS
    # Only a and b are read from for a while; c's estimate fades, and c is tried again.
    steps = 100
    for step in range(1, steps + 1):
        for address in ("a:1", "b:1"):
            read(load, address, 0.02, 10 + step * 10 * HALF_LIFE / steps)
    later = 10 + 10 * HALF_LIFE
    assert firsts(load, now=later)["c:1"] > 0.25 * DRAWS
    # Its next answers, as fast as the others', keep it there.
    for _ in range(10):
        read(load, "c:1", 0.02, later)
    counts = firsts(load, now=later)
    assert all(0.27 * DRAWS < counts[address] < 0.40 * DRAWS for address in NODES), counts


def test_a_new_node_costs_the_floor_and_its_first_answer_sets_the_estimate() -> None:
    load = ReadLoad(random.Random(1))
    assert load.cost("a:1", 5) == FLOOR
    read(load, "a:1", 0.25, 5.25)
    assert load.cost("a:1", 5.25) == 0.25
    read(load, "a:1", 0.05, 6.05)  # faded a little since 5.25, then moved by the answer
    assert 0.05 < load.cost("a:1", 6.05) < 0.25


def test_a_dropped_read_is_no_longer_out_and_leaves_the_estimate() -> None:
    load = measured({"a:1": 0.02})
    load.sent("a:1", 10)
    load.dropped("a:1", 10)
    assert load.cost("a:1", 10) == pytest.approx(0.02)


addresses = st.lists(st.sampled_from(("a:1", "b:1", "c:1", "d:1", "e:1")), unique=True)


@given(
    replicas=addresses,
    suspects=addresses,
    events=st.lists(
        st.tuples(st.sampled_from(("a:1", "b:1", "c:1")), st.floats(0, 5), st.booleans())
    ),
    seed=st.integers(0, 2**32),
)
def test_an_order_holds_every_replica_once_with_the_suspects_last_in_ring_order(
    replicas: list[str], suspects: list[str], events: list[tuple[str, float, bool]], seed: int
) -> None:
    load = ReadLoad(random.Random(seed))
    for address, took, answered in events:
        load.sent(address, 100.0)
        if answered:
            load.answered(address, 100.0, 100.0 + took)
    order = load.order([(a, 1.0) for a in replicas], 104.0, set(suspects).__contains__)
    assert sorted(order) == sorted(replicas)
    healthy = [a for a in replicas if a not in suspects]
    assert order[len(healthy) :] == [a for a in replicas if a in suspects]
