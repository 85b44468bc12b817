"""The register's shell without sockets: wire forms, the durable acceptor state, and the
founding change and its check."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from ringfs.node.agreement import disagreement, founding, readdress
from ringfs.node.cluster.map import ClusterMap, parse_members
from ringfs.node.cluster.paxos import (
    Accepted,
    AcceptorState,
    Ballot,
    Promise,
    Register,
    Reject,
)
from ringfs.node.errors import NodeError
from ringfs.node.register import (
    RegisterStore,
    answer_from_wire,
    answer_to_wire,
    ballot_from_wire,
    register_from_wire,
)

MEMBERS = parse_members("n1=127.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003")
VALUE = Register(4, {"cluster": "c0ffee", "nodes": [1, 2]}, (("a1", True), ("b2", None)))


def test_answers_round_trip_through_their_wire_form() -> None:
    ballot = Ballot(7, "n1")
    for answer in (
        Promise("n2", "n1", ballot, Ballot(3, "n3"), VALUE),
        Promise("n2", "n1", ballot, Ballot.zero(), Register()),
        Accepted("n2", "n1", ballot),
        Reject("n2", "n1", ballot, Ballot(9, "n3")),
    ):
        assert answer_from_wire(answer_to_wire(answer), "n2", "n1", ballot) == answer


@pytest.mark.parametrize(
    "wire",
    [None, [], ["promise"], ["promise", [1, "x"], [0, None]], ["nod"], ["reject", [-1, "x"]],
     ["reject", [True, "x"]], ["promise", [1, "x"], [0, None, [["id"]]]]],
)  # fmt: skip
def test_malformed_answers_are_refused(wire: Any) -> None:
    with pytest.raises(NodeError) as refused:
        answer_from_wire(wire, "n2", "n1", Ballot(1, "n1"))
    assert refused.value.name == "EINVAL"


def test_wire_values_are_checked() -> None:
    assert ballot_from_wire([0, ""]) == Ballot.zero()
    assert register_from_wire([4, "v", [["a", 1]]]) == Register(4, "v", (("a", 1),))
    for bad in ([1], "1,x", [1, 2]):
        with pytest.raises(NodeError):
            ballot_from_wire(bad)


def test_the_acceptor_state_survives_a_restart(tmp_path: Path) -> None:
    store = RegisterStore(tmp_path)
    assert (store.state, store.counter) == (AcceptorState(), 0)
    state = AcceptorState(Ballot(5, "n2"), Ballot(4, "n1"), VALUE)
    store.save(state, 12)
    again = RegisterStore(tmp_path)
    assert (again.state, again.counter) == (state, 12)
    assert [p.name for p in tmp_path.iterdir()] == ["register"]  # no temporary file left


def test_a_damaged_register_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "register").write_bytes(b"\x93not a register")
    with pytest.raises(NodeError) as refused:
        RegisterStore(tmp_path)
    assert "not a register file" in str(refused.value)


def test_the_first_map_founds_the_cluster_and_later_ones_keep_it() -> None:
    mine = ClusterMap(1, MEMBERS, 3)
    change = founding(mine, "c0ffee")
    founded, result = change(None)
    pinned = tuple(node.node_id for node in mine.meta_nodes())
    assert founded == ClusterMap(1, MEMBERS, 3, "c0ffee", pinned).to_wire()
    assert result is None  # the register's value tells: nothing big is kept with the change
    other = founding(ClusterMap(1, MEMBERS[:2], 2), "beef")
    assert other(founded) == (founded, None)


def test_a_map_with_other_members_or_replicas_disagrees() -> None:
    agreed = ClusterMap(1, MEMBERS, 3)
    assert disagreement(agreed, ClusterMap(1, MEMBERS, 3)) is None
    moved = parse_members("n1=10.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7003")
    assert disagreement(agreed, ClusterMap(2, moved, 3)) is None  # addresses may change
    stranger = parse_members("n1=127.0.0.1:7001,n2=127.0.0.1:7002,x=127.0.0.1:7009")
    assert disagreement(agreed, ClusterMap(1, stranger, 3)) == (
        "this node was started with members n1, n2, x, but the cluster agreed on n1, n2, n3"
    )
    assert disagreement(agreed, ClusterMap(1, MEMBERS, 2)) == (
        "this node was started with 2 replicas, but the cluster agreed on 3"
    )
    named = ClusterMap(1, MEMBERS, 3, "c0ffee").pinned()
    assert disagreement(named, ClusterMap(1, MEMBERS, 3)) is None  # learns its id
    elsewhere = ClusterMap(1, MEMBERS, 3, meta=("n3", "n1", "n2"))
    assert disagreement(named, elsewhere) == (
        "this node takes n3, n1, n2 for the meta group, but the cluster agreed on n2, n1, n3"
    )
    assert disagreement(named, ClusterMap(1, MEMBERS, 3, "beef").pinned()) == (
        "this node belongs to cluster beef, not c0ffee"
    )


def test_a_node_of_the_cluster_goes_by_its_map_whatever_changed_since() -> None:
    grown = ClusterMap(7, (*MEMBERS, *parse_members("n4=127.0.0.1:7004")), 3, "c0ffee")
    assert disagreement(grown, ClusterMap(3, MEMBERS, 3, "c0ffee")) is None
    # Started for the first time with the founding members, after the cluster grew.
    assert disagreement(grown, ClusterMap(1, MEMBERS, 3)) is None
    stranger = parse_members("n1=127.0.0.1:7001,x=127.0.0.1:7009")
    assert disagreement(grown, ClusterMap(1, stranger, 3)) == (
        "this node was started with members n1, x, but the cluster agreed on n1, n2, n3, n4"
    )


def test_new_addresses_come_in_a_new_epoch_once() -> None:
    agreed = ClusterMap(4, MEMBERS, 3, "c0ffee").pinned()
    given = ClusterMap(5, parse_members("n1=10.0.0.1:7001,n2=127.0.0.1:7002,n3=127.0.0.1:7009"))
    change = readdress(given.nodes)
    moved, result = change(agreed.to_wire())
    assert result is None
    assert ClusterMap.from_wire(moved) == dataclasses.replace(agreed, nodes=given.nodes, epoch=5)
    assert change(moved) == (moved, None)  # already there: nothing changes
    assert change({"not": "a map"}) == ({"not": "a map"}, None)
