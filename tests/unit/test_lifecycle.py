"""A node's own moves in the map, and the leader's out-timer, as pure decisions."""

from __future__ import annotations

import pytest

from ringfs.node.lifecycle import OutTimer, own_move


@pytest.mark.parametrize(
    ("state", "filled", "empty", "seated", "move"),
    [
        ("down-out", False, False, False, "rejoin"),
        ("joining", False, False, False, None),
        ("joining", True, False, False, "activate"),
        ("active", True, True, False, None),
        ("draining", True, False, False, None),
        ("draining", False, True, False, "leave"),
        ("draining", False, True, True, None),  # the meta group still counts on it
        ("removed", True, True, False, None),
    ],
)
def test_a_node_moves_itself_only_when_it_is_time(
    state: str, filled: bool, empty: bool, seated: bool, move: str | None
) -> None:
    assert own_move(state, filled, empty, seated) == move


def test_a_node_is_overdue_after_the_out_time_of_silence() -> None:
    timer = OutTimer(out_after=600.0)
    assert timer.overdue(["a", "b"], now=100.0) == []  # first watched: the clock starts
    timer.answered("a", 500.0)
    assert timer.overdue(["a", "b"], now=699.0) == []
    assert timer.overdue(["a", "b"], now=700.0) == ["b"]
    assert timer.overdue(["a", "b"], now=1100.0) == ["a", "b"]
    timer.answered("b", 1100.0)
    assert timer.overdue(["a", "b"], now=1100.0) == ["a"]


def test_a_new_leader_gives_every_node_the_full_time_again() -> None:
    timer = OutTimer(out_after=10.0)
    timer.overdue(["a"], now=0.0)
    timer.reset()
    assert timer.overdue(["a"], now=15.0) == []
    assert timer.overdue(["a"], now=25.0) == ["a"]
