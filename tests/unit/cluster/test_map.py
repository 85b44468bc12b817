"""The cluster map: placement from the ring, wire validation, member parsing, persistence."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ringfs.node.cluster.map import ClusterMap, NodeInfo, parse_members
from ringfs.node.cluster.ring import block_point
from ringfs.node.errors import NodeError

BLOCK = bytes(range(16))


def _nodes(count: int, **extra: Any) -> tuple[NodeInfo, ...]:
    return tuple(NodeInfo(f"n{i}", "127.0.0.1", 7000 + i, **extra) for i in range(1, count + 1))


def _ids(nodes: list[NodeInfo]) -> list[str]:
    return [node.node_id for node in nodes]


def test_address() -> None:
    assert NodeInfo("a", "127.0.0.1", 7001).address == "127.0.0.1:7001"
    assert NodeInfo("a", "::1", 7001).address == "[::1]:7001"


def test_placement_follows_ring() -> None:
    cmap = ClusterMap(1, _nodes(5))
    assert cmap.replica_count() == 3
    assert cmap.write_quorum() == 2
    order = cmap.ring().preference_at(block_point(BLOCK), 5)  # where the id begins
    assert _ids(cmap.placement(BLOCK)) == order[:3]
    assert _ids(cmap.fallbacks(BLOCK)) == order[3:]
    assert cmap.ring() is cmap.ring()
    assert cmap.arcs("n1") == cmap.ring().arcs("n1", 3)


@pytest.mark.parametrize(("up", "replicas", "quorum"), [(1, 1, 1), (2, 2, 2), (3, 3, 2), (7, 3, 2)])
def test_replicas_shrink_with_small_clusters(up: int, replicas: int, quorum: int) -> None:
    cmap = ClusterMap(1, _nodes(up))
    assert cmap.replica_count() == replicas
    assert cmap.write_quorum() == quorum
    assert len(cmap.placement(BLOCK)) == replicas
    assert len(cmap.meta_nodes()) == min(3, up)


def test_five_replicas_need_three() -> None:
    cmap = ClusterMap(1, _nodes(6), replicas=5)
    assert (cmap.replica_count(), cmap.write_quorum()) == (5, 3)


def test_only_up_nodes_are_placed() -> None:
    nodes = (
        *_nodes(3),
        NodeInfo("d", "127.0.0.1", 7010, state="draining"),
        NodeInfo("r", "127.0.0.1", 7011, state="removed"),
    )
    cmap = ClusterMap(2, nodes)
    assert len(cmap.ring()) == 3
    assert cmap.node("d").state == "draining"
    for i in range(50):
        key = bytes([i]) * 16
        assert set(_ids(cmap.placement(key) + cmap.fallbacks(key))) == {"n1", "n2", "n3"}


def test_meta_nodes_are_ring_choice_for_meta() -> None:
    cmap = ClusterMap(1, _nodes(5))
    assert _ids(cmap.meta_nodes()) == cmap.ring().preference(b"meta", 3)


def test_unknown_node_is_key_error() -> None:
    with pytest.raises(KeyError):
        ClusterMap(1, _nodes(2)).node("nope")


def test_empty_map() -> None:
    cmap = ClusterMap(0, ())
    assert cmap.replica_count() == 0
    assert cmap.placement(BLOCK) == []
    assert cmap.fallbacks(BLOCK) == []
    assert cmap.meta_nodes() == []


def test_wire_round_trip() -> None:
    nodes = (
        NodeInfo("a", "10.0.0.1", 7001, weight=2.0, zone="z1"),
        NodeInfo("b", "::1", 7002, zone="z2", state="draining"),
    )
    cmap = ClusterMap(7, nodes, replicas=2, keys=(("alice", b"s" * 16), ("bob", b"t" * 16)))
    wire = cmap.to_wire()
    assert json.loads(json.dumps(wire)) == wire
    assert ClusterMap.from_wire(wire) == cmap


def test_a_map_saved_before_cluster_ids_loads_without_one() -> None:
    old = _drop("cluster")
    del old["meta"], old["keys"]
    assert ClusterMap.from_wire(old) == ClusterMap(3, _nodes(2))
    named = ClusterMap(3, _nodes(2), cluster_id="c0ffee", meta=("n1",))
    assert ClusterMap.from_wire(named.to_wire()) == named


def test_new_addresses_are_matched_by_id_in_the_same_epoch() -> None:
    cmap = ClusterMap(3, _nodes(3), cluster_id="c0ffee")
    given = (NodeInfo("n2", "10.0.0.2", 9002), NodeInfo("n9", "10.0.0.9", 9009))
    moved = cmap.readdressed(given)
    assert [n.address for n in moved.nodes] == ["127.0.0.1:7001", "10.0.0.2:9002", "127.0.0.1:7003"]
    assert (moved.epoch, moved.cluster_id) == (3, "c0ffee")
    assert cmap.readdressed(cmap.nodes) == cmap


def test_a_pinned_meta_group_stays_when_the_ring_changes() -> None:
    five = ClusterMap(1, _nodes(5))
    pinned = five.pinned()
    assert [n.node_id for n in pinned.meta_nodes()] == [n.node_id for n in five.meta_nodes()]
    heavier = tuple(
        NodeInfo(n.node_id, n.host, n.port, weight=9.0) if n.node_id not in pinned.meta else n
        for n in five.nodes
    )
    moved = ClusterMap(2, heavier)
    assert moved.meta_nodes() != five.meta_nodes()  # the ring alone would move the group
    kept = ClusterMap(2, heavier, meta=pinned.meta)
    assert kept.meta_nodes() == pinned.meta_nodes()
    with pytest.raises(ValueError, match="distinct members"):
        ClusterMap(1, _nodes(3), meta=("n1", "n9"))
    with pytest.raises(ValueError, match="distinct members"):
        ClusterMap(1, _nodes(3), meta=("n1", "n1"))


def _wire() -> dict[str, Any]:
    return ClusterMap(3, _nodes(2)).to_wire()


def _drop(key: str) -> dict[str, Any]:
    wire = _wire()
    del wire[key]
    return wire


def _set(key: str, value: object) -> dict[str, Any]:
    return {**_wire(), key: value}


def _set_node(key: str, value: object) -> dict[str, Any]:
    wire = _wire()
    wire["nodes"][0][key] = value
    return wire


@pytest.mark.parametrize(
    "obj",
    [
        None,
        [],
        "map",
        _drop("epoch"),
        _set("extra", 1),
        _set("epoch", "3"),
        _set("epoch", True),
        _set("epoch", -1),
        _set("cluster", 5),
        _set("meta", "n1"),
        _set("meta", ["n9"]),
        _set("replicas", 0),
        _set("nodes", {}),
        _set("nodes", ["n1"]),
        _set_node("port", "7001"),
        _set_node("port", 70000),
        _set_node("weight", "1"),
        _set_node("weight", -1.0),
        _set_node("state", "gone"),
        _set_node("id", 5),
        _set_node("host", b"127.0.0.1"),
        _set_node("id", "n2"),
        _set_node("extra", None),
        _set("keys", {"alice": "00" * 16}),
        _set("keys", [["alice"]]),
        _set("keys", [["alice", b"\0" * 16]]),
        _set("keys", [["alice", "zz" * 16]]),
        _set("keys", [["alice", "00" * 15]]),
        _set("keys", [["-alice", "00" * 16]]),
        _set("keys", [["b", "00" * 16], ["a", "00" * 16]]),
        _set("keys", [["a", "00" * 16], ["a", "01" * 16]]),
    ],
)
def test_malformed_wire_is_einval(obj: object) -> None:
    with pytest.raises(NodeError) as info:
        ClusterMap.from_wire(obj)
    assert info.value.name == "EINVAL"


def test_a_key_is_in_force_while_the_map_lists_it() -> None:
    cmap = ClusterMap(3, _nodes(2), keys=(("alice", b"s" * 16),))
    assert cmap.key_salt("alice") == b"s" * 16
    assert cmap.key_salt("bob") is None
    assert ClusterMap(3, _nodes(2)).key_salt("alice") is None


def test_integer_weight_from_wire_is_accepted() -> None:
    assert ClusterMap.from_wire(_set_node("weight", 2)).nodes[0].weight == 2.0


def test_parse_members() -> None:
    nodes = parse_members("n1=127.0.0.1:7001, n2=[::1]:7002,n3=host.example:9")
    assert nodes == (
        NodeInfo("n1", "127.0.0.1", 7001),
        NodeInfo("n2", "::1", 7002),
        NodeInfo("n3", "host.example", 9),
    )


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "expected ID=HOST:PORT"),
        ("n1=127.0.0.1:7001,", "expected ID=HOST:PORT"),
        ("127.0.0.1:7001", "expected ID=HOST:PORT"),
        ("=127.0.0.1:7001", "expected ID=HOST:PORT"),
        ("n1=127.0.0.1", "expected HOST:PORT"),
        ("n1=:7001", "expected HOST:PORT"),
        ("n1=127.0.0.1:http", "bad port"),
        ("n1=127.0.0.1:0", "bad port"),
        ("n1=127.0.0.1:65536", "bad port"),
        ("n1=127.0.0.1:-1", "bad port"),
        ("n1=127.0.0.1:\u00b2", "bad port"),
        ("n1=a:1,n1=b:2", "duplicate node id 'n1'"),
    ],
)
def test_parse_members_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_members(spec)


def test_save_load(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    first = ClusterMap(1, _nodes(3))
    first.save(path)
    second = ClusterMap(2, _nodes(4), replicas=2)
    second.save(path)
    assert ClusterMap.load(path) == second
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.json"]


def test_load_garbage_is_einval(tmp_path: Path) -> None:
    path = tmp_path / "cluster.json"
    path.write_bytes(b"\xff not json")
    with pytest.raises(NodeError) as info:
        ClusterMap.load(path)
    assert info.value.name == "EINVAL"


def test_failed_save_keeps_old_map(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cluster.json"
    ClusterMap(1, _nodes(3)).save(path)

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.fsync", fail)
    with pytest.raises(OSError, match="No space"):
        ClusterMap(2, _nodes(4)).save(path)
    monkeypatch.undo()
    assert ClusterMap.load(path).epoch == 1
    assert [p.name for p in tmp_path.iterdir()] == ["cluster.json"]
