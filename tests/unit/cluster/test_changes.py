"""Changes of the cluster map, as pure functions."""

from __future__ import annotations

import itertools

import pytest

from ringfs.node.cluster.changes import OPERATIONS, change_map, reweigh
from ringfs.node.cluster.keys import MAX_KEYS, key_lookup, key_secret
from ringfs.node.cluster.map import ClusterMap, parse_members

MAP = ClusterMap(4, parse_members("a=h:1,b=h:2,c=h:3,d=h:4"), 3, "c0ffee", ("a", "b", "c"))
IDS = [bytes([i, j]) * 8 for i in range(256) for j in (0, 128)]


def holders(cmap: ClusterMap, node_id: str) -> set[bytes]:
    return {b for b in IDS if node_id in {n.node_id for n in cmap.placement(b)}}


def moved(before: ClusterMap, after: ClusterMap) -> int:
    """Copies that must move: (block, node) placements in `after` that `before` lacks."""
    return sum(
        len({n.node_id for n in after.placement(b)} - {n.node_id for n in before.placement(b)})
        for b in IDS
    )


def test_a_new_weight_comes_in_the_next_epoch_and_changes_nothing_else() -> None:
    heavier = reweigh(MAP, "d", 3)
    assert heavier.epoch == 5
    assert [n.weight for n in heavier.nodes] == [1.0, 1.0, 1.0, 3.0]
    assert (heavier.cluster_id, heavier.meta, heavier.replicas) == ("c0ffee", MAP.meta, 3)
    assert len(holders(heavier, "d")) > len(holders(MAP, "d"))
    assert change_map(MAP, "weight", ["d", 3]) == heavier


@pytest.mark.parametrize(
    ("operation", "arguments", "why"),
    [
        ("weight", ["x", 2], "no node 'x'"),
        ("weight", ["d", 0], "above 0"),
        ("weight", ["d", float("nan")], "above 0"),
        ("weight", ["d", 101], "at most 100"),
        ("weight", ["d", True], "weight takes node_id, weight"),
        ("weight", ["d"], "weight takes node_id, weight"),
        ("add", ["e", "h", "5", 1, ""], "add takes node_id, host, port, weight, zone"),
        ("add", ["e", "h", 70000, 1, ""], "port 70000 is out of range"),
        ("add", ["e", "h", 4, 1, ""], "h:4 is the address of node d"),
        ("add", ["d", "h", 9, 1, ""], "node d is a member already, at h:4"),
        ("activate", ["x"], "no node .x."),
        ("explode", [], "unknown map change"),
        ("issue-key", ["a b", "00" * 16], "a key name is 1 to 64 letters"),
        ("issue-key", ["", "00" * 16], "a key name is"),
        ("issue-key", ["k" * 65, "00" * 16], "a key name is"),
        ("issue-key", ["alice", "00" * 8], "a key's salt is 16 bytes in hex"),
        ("issue-key", ["alice", "not hex"], "a key's salt is 16 bytes in hex"),
        ("issue-key", ["alice"], "issue-key takes name, salt"),
        ("revoke-key", [7], "revoke-key takes name"),
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
    assert holders(drained, "d") == set()
    assert drained.arcs("d") == []


@pytest.mark.parametrize(
    ("cmap", "node", "why"),
    [
        (MAP, "x", "no node 'x'"),
        (change_map(MAP, "remove", ["d"]), "d", "d is removed, not active or joining"),
        (ClusterMap(1, MAP.nodes, 4, meta=MAP.meta), "d", "leave 3 nodes for 4 copies"),
    ],
)
def test_a_drain_that_cannot_be_made_says_why(cmap: ClusterMap, node: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        change_map(cmap, "drain", [node])


def test_a_joining_node_takes_its_share_and_only_that() -> None:
    joined = change_map(MAP, "add", ["e", "h", 5, 1.0, ""])
    assert (joined.epoch, joined.node("e").state) == (5, "joining")
    # Every copy that moves, moves to the new node: about a fifth of all copies.
    assert moved(MAP, joined) == len(holders(joined, "e"))
    assert 0.1 < len(holders(joined, "e")) / len(IDS) < 0.9
    assert change_map(joined, "add", ["e", "h", 5, 1.0, ""]) is joined  # a retry
    active = change_map(joined, "activate", ["e"])
    assert active.node("e").state == "active"
    assert active.placement(IDS[0]) == joined.placement(IDS[0])


def test_a_drained_node_leaves_and_its_id_is_not_taken_again() -> None:
    left = change_map(change_map(MAP, "drain", ["d"]), "leave", ["d"])
    assert left.node("d").state == "removed"
    assert "d" not in left.acceptors()
    with pytest.raises(ValueError, match="d was removed"):
        change_map(left, "add", ["d", "h", 4, 1.0, ""])
    with pytest.raises(ValueError, match="d is active, not draining"):
        change_map(MAP, "leave", ["d"])


def test_a_node_out_joins_again_when_back() -> None:
    out = change_map(MAP, "out", ["d"])
    assert out.node("d").state == "down-out"
    assert holders(out, "d") == set()
    assert "d" in out.acceptors()
    back = change_map(out, "rejoin", ["d"])
    assert back.node("d").state == "joining"
    assert holders(back, "d") == holders(MAP, "d")
    with pytest.raises(ValueError, match="marking out c would leave 2 nodes for 3 copies"):
        change_map(out, "out", ["c"])


def test_a_replacement_takes_exactly_the_old_nodes_blocks() -> None:
    joined = change_map(MAP, "add", ["e", "h", 5, 1.0, "z"])
    replaced = change_map(joined, "replace", ["d", "e"])
    assert (replaced.node("d").state, replaced.node("e").ring) == ("draining", "d")
    assert holders(replaced, "e") == holders(MAP, "d")
    for block in IDS:  # the placement of every block is the old one, e for d
        old = [n.node_id for n in MAP.placement(block)]
        assert [n.node_id for n in replaced.placement(block)] == [
            "e" if node == "d" else node for node in old
        ]
    assert change_map(replaced, "replace", ["d", "e"]) is replaced  # a retry
    out_then_replaced = change_map(change_map(joined, "out", ["d"]), "replace", ["d", "e"])
    assert out_then_replaced.node("d").state == "removed"
    assert change_map(joined, "replace", ["a", "e"]).meta == ("e", "b", "c")
    # A replacement already in the meta group: the ring's next pick takes the place.
    first, *rest = change_map(joined, "replace", ["a", "b"]).meta
    assert first in ("d", "e")
    assert rest == ["b", "c"]


@pytest.mark.parametrize("operation", ["drain", "remove"])
def test_a_meta_member_taken_out_is_followed_by_the_rings_next_pick(operation: str) -> None:
    after = change_map(MAP, operation, ["b"])
    assert after.meta == ("a", "d", "c")
    assert after.founders == MAP.meta_founders() == ("a", "b", "c")
    # With no placed node left outside it, the group shrinks.
    three = ClusterMap(1, MAP.nodes[:3], 2, "c0ffee", ("a", "b", "c"))
    assert change_map(three, operation, ["b"]).meta == ("a", "c")


def test_a_member_marked_out_stays_in_the_meta_group() -> None:
    assert change_map(MAP, "out", ["a"]).meta == MAP.meta


def test_a_removed_dead_node_leaves_its_blocks_to_the_others() -> None:
    removed = change_map(MAP, "remove", ["d"])
    assert removed.node("d").state == "removed"
    assert holders(removed, "d") == set()
    assert moved(MAP, removed) == len(holders(MAP, "d"))


def test_every_change_adds_or_removes_at_most_one_acceptor() -> None:
    """What keeps the register safe across changes (see `changes`): walk every sequence of
    three changes from a few maps."""
    starts = [MAP, change_map(MAP, "add", ["e", "h", 5, 1.0, ""])]
    steps = [
        (name, arguments)
        for name in OPERATIONS
        for arguments in {
            "add": [["f", "h", 6, 1.0, ""]],
            "weight": [["d", 2.0]],
            "replace": [["d", "e"], ["c", "f"]],
        }.get(name, [[node] for node in "abcdef"])
    ]
    for start in starts:
        for sequence in itertools.product(steps, repeat=2):
            cmap = start
            for name, arguments in sequence:
                try:
                    after = change_map(cmap, name, list(arguments))
                except ValueError:
                    continue
                assert len(set(cmap.acceptors()) ^ set(after.acceptors())) <= 1
                cmap = after


SALT, OTHER_SALT = "ab" * 16, "cd" * 16


def test_a_key_is_issued_in_the_next_epoch_and_a_retry_changes_nothing() -> None:
    issued = change_map(MAP, "issue-key", ["mount-1", SALT])
    assert issued.epoch == MAP.epoch + 1
    assert issued.key_salt("mount-1") == bytes.fromhex(SALT)
    assert (issued.nodes, issued.meta) == (MAP.nodes, MAP.meta)
    assert change_map(issued, "issue-key", ["mount-1", SALT]) == issued
    with pytest.raises(ValueError, match="key mount-1 exists: revoke it first"):
        change_map(issued, "issue-key", ["mount-1", OTHER_SALT])
    both = change_map(issued, "issue-key", ["alice", OTHER_SALT])
    assert [name for name, _ in both.keys] == ["alice", "mount-1"]


def test_a_revoked_key_is_gone_and_issued_again_gets_another_secret() -> None:
    issued = change_map(MAP, "issue-key", ["mount-1", SALT])
    revoked = change_map(issued, "revoke-key", ["mount-1"])
    assert revoked.epoch == issued.epoch + 1
    assert revoked.key_salt("mount-1") is None
    assert change_map(revoked, "revoke-key", ["mount-1"]) == revoked  # a retry
    again = change_map(revoked, "issue-key", ["mount-1", OTHER_SALT])
    lookup = key_lookup(b"node secret", again.key_salt)
    assert lookup("mount-1") == key_secret(b"node secret", "mount-1", bytes.fromhex(OTHER_SALT))
    assert lookup("mount-1") != key_secret(b"node secret", "mount-1", bytes.fromhex(SALT))
    assert key_lookup(b"node secret", revoked.key_salt)("mount-1") is None


def test_a_keys_secret_needs_the_node_secret_and_differs_per_name_and_salt() -> None:
    salt = bytes.fromhex(SALT)
    secrets = {
        key_secret(b"node secret", "a", salt),
        key_secret(b"another secret", "a", salt),
        key_secret(b"node secret", "b", salt),
        key_secret(b"node secret", "a", bytes.fromhex(OTHER_SALT)),
        # The separators keep a name and salt from sliding into each other.
        key_secret(b"node secret", "a\0", salt[1:]),
    }
    assert len(secrets) == 5
    assert all(len(secret) == 32 for secret in secrets)


def test_the_map_holds_a_bounded_number_of_keys() -> None:
    many = ClusterMap(
        MAP.epoch, MAP.nodes, keys=tuple((f"k{i:05d}", bytes(16)) for i in range(MAX_KEYS))
    )
    with pytest.raises(ValueError, match=f"has {MAX_KEYS} keys"):
        change_map(many, "issue-key", ["z", SALT])
