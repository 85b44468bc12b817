"""The Raft group's way to the map's meta group, as pure decisions."""

from __future__ import annotations

from ringfs.node.meta.membership import ADD, LEARN, REMOVE, Step, next_step


def walk(voters: tuple[str, ...], wanted: tuple[str, ...], leader: str) -> list[Step]:
    """Every step from `voters` to `wanted`, each learner catching up at its second look."""
    steps: list[Step] = []
    current, looked = set(voters), set()
    while (step := next_step(current, wanted, leader, looked.__contains__)) is not None:
        steps.append(step)
        if step.action == LEARN:
            looked.add(step.node)
        elif step.action == ADD:
            current.add(step.node)
        else:
            current.remove(step.node)
        assert len(steps) < 20
    assert current == set(wanted)
    return steps


def test_a_replacement_catches_up_is_added_and_only_then_the_old_member_goes() -> None:
    assert walk(("a", "b", "c"), ("a", "d", "c"), "a") == [
        Step(LEARN, "d"),
        Step(ADD, "d"),
        Step(REMOVE, "b"),
    ]


def test_the_leader_removes_itself_last() -> None:
    steps = walk(("a", "b", "c"), ("d", "e", "c"), "a")
    assert [s.action for s in steps] == [LEARN, ADD, LEARN, ADD, REMOVE, REMOVE]
    assert [s.node for s in steps if s.action == REMOVE] == ["b", "a"]


def test_the_group_never_counts_fewer_wanted_members_than_before() -> None:
    voters = {"a", "b", "c"}
    for step in walk(("a", "b", "c"), ("c", "d", "e"), "b"):
        if step.action == ADD:
            voters.add(step.node)
        elif step.action == REMOVE:
            voters.remove(step.node)
        assert len(voters) >= 3


def test_nothing_to_do_when_the_group_is_as_wanted_or_nothing_is_wanted() -> None:
    assert next_step({"a", "b", "c"}, ("c", "a", "b"), "a", lambda node: True) is None
    assert next_step({"a", "b", "c"}, (), "a", lambda node: True) is None


def test_a_shrinking_group_only_removes() -> None:
    assert walk(("a", "b", "c"), ("a", "c"), "a") == [Step(REMOVE, "b")]
