"""What `ringfs status` says is wrong, from what it gathered."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ringfs.node.cluster.map import ClusterMap, parse_members
from ringfs.tools.health import LAG_ENTRIES, problems

GiB = 2**30
MAP = ClusterMap(3, parse_members("a=h:1,b=h:2,c=h:3,d=h:4"), 3, "c0ffee", ("a", "b", "c"))


def stats(free: int = 50 * GiB, missing: int = 0) -> dict[str, Any]:
    record = {"missing": missing, "repaired": 0}
    return {
        "capacity": 100 * GiB,
        "free": free,
        "reserve": 2 * GiB,
        "repair": {"current": None, "last": record},
    }


def member(role: str, last_index: int = 500, failure: str | None = None) -> dict[str, Any]:
    return {"role": role, "last_index": last_index, "voters": ["a", "b", "c"], "failure": failure}


def healthy() -> tuple[list[Any], list[Any]]:
    nodes = [(info, stats()) for info in MAP.nodes]
    members = [(MAP.node("a"), member("leader")), (MAP.node("b"), member("follower")),
               (MAP.node("c"), member("follower"))]  # fmt: skip
    return nodes, members


def test_a_healthy_cluster_has_no_problem() -> None:
    assert problems(MAP, *healthy()) == []


def test_each_problem_is_said_in_words() -> None:
    nodes, members = healthy()
    nodes[1] = (MAP.node("b"), stats(free=int(2.5 * GiB)))  # 0.5 GiB left for blocks
    nodes[2] = (MAP.node("c"), stats(free=2 * GiB, missing=7))
    nodes[3] = (MAP.node("d"), None)
    members[1] = (MAP.node("b"), member("follower", 500 - LAG_ENTRIES - 1))
    members[2] = (MAP.node("c"), member("stopped", failure="disk full"))
    assert problems(MAP, nodes, members) == [
        f"meta-group member b lags {LAG_ENTRIES + 1} log entries behind the leader",
        "meta-group member c stopped: its storage failed (disk full)",
        "node b's disk is 99.5% used: block writes stop at 100%",
        "node c's disk is full: it refuses block writes (free space is down to the reserve "
        "kept for the metadata)",
        "node d (h:4) does not answer",
        "7 copies are missing on the nodes that should hold them (fewer copies than the "
        "replicas, or on other nodes): repair passes are copying them",
    ]


def test_no_leader_is_said_first_and_a_node_out_is_said_as_such() -> None:
    nodes, members = healthy()
    members[0] = (MAP.node("a"), None)
    members[1] = (MAP.node("b"), member("candidate"))
    out = replace(MAP.node("d"), state="down-out")
    nodes[3] = (out, None)
    assert problems(MAP, nodes, members) == [
        "the meta group has no leader: metadata calls fail until it elects one",
        "node d is marked out (down longer than its out-time): its blocks are placed on the others",
    ]


def test_a_meta_group_on_its_way_to_the_map_says_so() -> None:
    nodes, members = healthy()
    moved = replace(MAP, meta=("a", "b", "d"))
    members.append((MAP.node("d"), member("follower")))
    assert problems(moved, nodes, members) == [
        "the meta group is changing: its voters are a, b, c, the map wants a, b, d"
    ]
