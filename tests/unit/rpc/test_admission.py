"""The budget of connections that have not authenticated yet."""

from __future__ import annotations

import pytest

from ringfs.node.rpc.admission import Admission


def test_one_address_over_its_share_closes_its_own_oldest() -> None:
    admission = Admission(max_pending=10, per_address=3)
    assert [admission.arrive(n, "flood") for n in range(3)] == [[], [], []]
    assert admission.arrive("client", "elsewhere") == []
    assert admission.arrive(3, "flood") == [0]
    assert admission.arrive(4, "flood") == [1]
    assert len(admission) == 4  # 2, 3, 4 and the client


def test_a_full_budget_closes_the_oldest_of_the_busiest_address() -> None:
    admission = Admission(max_pending=4, per_address=3)
    admission.arrive("a1", "a")
    for n in range(3):
        admission.arrive(n, "flood")
    assert admission.arrive("b1", "b") == [0]
    assert admission.arrive("c1", "c") == [1]
    # One each now: the oldest connection goes.
    assert admission.arrive("d1", "d") == ["a1"]
    assert admission.arrive("e1", "e") == [2]


def test_authenticated_or_closed_connections_no_longer_count() -> None:
    admission = Admission(max_pending=2, per_address=2)
    admission.arrive(1, "x")
    admission.arrive(2, "x")
    admission.leave(1)
    admission.leave(99)  # never pending: nothing happens
    assert admission.arrive(3, "x") == []
    assert len(admission) == 2


def test_limits_must_make_sense() -> None:
    with pytest.raises(ValueError, match="per_address"):
        Admission(max_pending=2, per_address=3)
    with pytest.raises(ValueError, match="per_address"):
        Admission(max_pending=2, per_address=0)
