"""Operators' changes of the cluster map, as pure functions."""

from __future__ import annotations

import pytest

from ringfs.node.cluster.changes import change_map, reweigh
from ringfs.node.cluster.map import ClusterMap, parse_members

MAP = ClusterMap(4, parse_members("a=h:1,b=h:2,c=h:3,d=h:4"), 3, "c0ffee", ("a", "b", "c"))


def test_a_new_weight_comes_in_the_next_epoch_and_changes_nothing_else() -> None:
    heavier = reweigh(MAP, "d", 3)
    assert heavier.epoch == 5
    assert [n.weight for n in heavier.nodes] == [1.0, 1.0, 1.0, 3.0]
    assert (heavier.cluster_id, heavier.meta, heavier.replicas) == ("c0ffee", MAP.meta, 3)
    ids = [bytes([i]) * 16 for i in range(256)]
    share = sum("d" in {n.node_id for n in heavier.placement(i)} for i in ids)
    assert share > sum("d" in {n.node_id for n in MAP.placement(i)} for i in ids)
    assert change_map(MAP, "weight", ["d", 3]) == heavier


@pytest.mark.parametrize(
    ("operation", "arguments", "why"),
    [
        ("weight", ["x", 2], "no node 'x'"),
        ("weight", ["d", 0], "above 0"),
        ("weight", ["d", float("nan")], "above 0"),
        ("weight", ["d", 101], "at most 100"),
        ("weight", ["d", True], "a node id and a number"),
        ("weight", ["d"], "unknown map change"),
        ("explode", [], "unknown map change"),
    ],
)
def test_a_change_that_cannot_be_made_says_why(
    operation: str, arguments: list[object], why: str
) -> None:
    with pytest.raises(ValueError, match=why):
        change_map(MAP, operation, arguments)


def test_a_drained_node_takes_no_placement_and_is_read_last() -> None:
    drained = change_map(MAP, "drain", ["d"])
    assert (drained.epoch, drained.node("d").state) == (5, "draining")
    assert [n.node_id for n in drained.draining()] == ["d"]
    ids = [bytes([i]) * 16 for i in range(256)]
    assert all("d" not in {n.node_id for n in drained.placement(i)} for i in ids)
    assert drained.arcs("d") == []


@pytest.mark.parametrize(
    ("cmap", "node", "why"),
    [
        (MAP, "x", "no node 'x'"),
        (MAP, "a", "a is in the meta group"),
        (change_map(MAP, "drain", ["d"]), "d", "d is draining, not up"),
        (ClusterMap(1, MAP.nodes, 4, meta=MAP.meta), "d", "leave 3 nodes for 4 copies"),
    ],
)
def test_a_drain_that_cannot_be_made_says_why(cmap: ClusterMap, node: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        change_map(cmap, "drain", [node])
