"""The hash ring: balance, minimal movement, weights, zones and cross-process stability."""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import subprocess
import sys
from collections import Counter

import pytest

from ringfs.node.cluster.ring import (
    RING_SIZE,
    Ring,
    RingNode,
    block_ids_at,
    block_point,
    key_point,
)

KEY_COUNT = 100_000


def _keys(count: int = KEY_COUNT, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(16) for _ in range(count)]


def _ring(*ids: str, vnodes: int = 128) -> Ring:
    return Ring((RingNode(node_id) for node_id in ids), vnodes=vnodes)


def _primaries(ring: Ring, keys: list[bytes]) -> list[str | None]:
    return [ring.primary(key) for key in keys]


FIVE = ("n1", "n2", "n3", "n4", "n5")


def test_balance() -> None:
    counts = Counter(_primaries(_ring(*FIVE), _keys()))
    mean = KEY_COUNT / len(FIVE)
    assert set(counts) == set(FIVE)
    for node_id, count in counts.items():
        assert abs(count - mean) <= 0.15 * mean, (node_id, count)


def test_adding_a_node_moves_about_a_sixth_only_to_it() -> None:
    keys = _keys()
    before = _primaries(_ring(*FIVE), keys)
    after = _primaries(_ring(*FIVE, "n6"), keys)
    moved = [new for old, new in zip(before, after, strict=True) if old != new]
    assert set(moved) == {"n6"}
    assert 0.10 <= len(moved) / KEY_COUNT <= 0.24


def test_removing_a_node_moves_only_its_keys() -> None:
    keys = _keys()
    before = _primaries(_ring(*FIVE), keys)
    after = _primaries(_ring("n1", "n2", "n4", "n5"), keys)
    for old, new in zip(before, after, strict=True):
        if old != "n3":
            assert new == old
        else:
            assert new != "n3"


def test_weight_two_gets_about_twice_the_keys() -> None:
    ring = Ring([RingNode("a"), RingNode("b"), RingNode("big", weight=2.0)])
    counts = Counter(_primaries(ring, _keys()))
    small = (counts["a"] + counts["b"]) / 2
    assert 1.6 <= counts["big"] / small <= 2.4


def test_preference_is_distinct_and_ordered_from_primary() -> None:
    ring = _ring(*FIVE)
    for key in _keys(1000):
        pref = ring.preference(key, 3)
        assert len(pref) == len(set(pref)) == 3
        assert pref[0] == ring.primary(key)
        # A longer list extends a shorter one: fallbacks come after the preferred nodes.
        assert ring.preference(key, 5)[:3] == pref


def test_preference_is_capped_by_ring_size() -> None:
    ring = _ring("a", "b")
    assert sorted(ring.preference(b"k", 5)) == ["a", "b"]
    assert ring.preference(b"k", 0) == []


def test_empty_ring() -> None:
    ring = _ring()
    assert ring.preference(b"k", 3) == []
    assert ring.primary(b"k") is None
    assert len(ring) == 0


def test_zones_come_first_then_ring_order() -> None:
    nodes = [RingNode(f"{zone}{i}", zone=zone) for zone in "xyz" for i in range(3)]
    ring = Ring(nodes)
    plain = Ring(RingNode(node.node_id) for node in nodes)
    zone_of = {node.node_id: node.zone for node in nodes}
    for key in _keys(1000):
        pref = ring.preference(key, 5)
        assert len(set(pref)) == 5
        assert {zone_of[node_id] for node_id in pref[:3]} == {"x", "y", "z"}
        walk = plain.preference(key, len(nodes))
        # The first three are each zone's first node in ring order; the rest keep ring order.
        firsts = [next(n for n in walk if zone_of[n] == zone_of[p]) for p in pref[:3]]
        assert pref[:3] == firsts
        rest = [n for n in walk if n not in pref[:3]]
        assert pref[3:] == rest[:2]
        assert sorted(pref[:3], key=walk.index) == pref[:3]


def test_fewer_zones_than_replicas_fills_in_ring_order() -> None:
    ring = Ring([RingNode("a1", zone="a"), RingNode("a2", zone="a"), RingNode("b1", zone="b")])
    for key in _keys(200):
        pref = ring.preference(key, 3)
        assert sorted(pref) == ["a1", "a2", "b1"]
        assert "b1" in pref[:2]


@pytest.mark.parametrize(
    ("nodes", "vnodes"),
    [
        ([RingNode("a"), RingNode("a")], 128),
        ([RingNode("a", weight=0.0)], 128),
        ([RingNode("a", weight=float("nan"))], 128),
        ([RingNode("a")], 0),
    ],
)
def test_invalid_rings_are_refused(nodes: list[RingNode], vnodes: int) -> None:
    with pytest.raises(ValueError, match=r"."):
        Ring(nodes, vnodes=vnodes)


_CHILD = """
import json, sys
from ringfs.node.cluster.ring import Ring, RingNode, key_point
ring = Ring([RingNode("n%d" % i, zone="z%d" % (i % 2)) for i in range(1, 6)])
keys = [bytes([i]) * 16 for i in range(50)]
print(json.dumps({"points": [key_point(k) for k in keys],
                  "prefs": [ring.preference(k, 3) for k in keys]}))
"""


def test_stable_across_processes() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    child = json.loads(out)
    ring = Ring([RingNode(f"n{i}", zone=f"z{i % 2}") for i in range(1, 6)])
    keys = [bytes([i]) * 16 for i in range(50)]
    assert child["points"] == [key_point(key) for key in keys]
    assert child["prefs"] == [ring.preference(key, 3) for key in keys]


def test_stable_across_instances() -> None:
    keys = _keys(500)
    first, second = _ring(*FIVE), _ring(*reversed(FIVE))
    assert [first.preference(k, 3) for k in keys] == [second.preference(k, 3) for k in keys]


def _reference_order(ids: tuple[str, ...], key: bytes, vnodes: int = 128) -> list[str]:
    """Nodes by the clockwise distance from the key to their nearest point, straight from
    the documented formula."""

    def point(data: bytes) -> int:
        return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")

    start = point(key)
    distance = {
        node_id: min((point(f"{node_id}\x00{i}".encode()) - start) % 2**64 for i in range(vnodes))
        for node_id in ids
    }
    return sorted(ids, key=distance.__getitem__)


def test_matches_documented_formula() -> None:
    # Pinned: changing the hash would move every block of every existing cluster.
    assert key_point(b"meta") == 12978660168395965215
    ring = _ring(*FIVE)
    for key in [b"meta", *_keys(20)]:
        assert ring.preference(key, 5) == _reference_order(FIVE, key)


@pytest.mark.parametrize("module", ["ringfs.node.cluster.ring", "ringfs.node.cluster.map"])
def test_import_loads_no_trio_or_fuse(module: str) -> None:
    heavy = "{'trio', 'pyfuse3', 'msgpack'}"
    code = f"import sys, {module}; print(sorted({heavy} & set(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, timeout=30
    ).stdout
    assert out.strip() == "[]"


def test_a_block_sits_where_its_id_begins() -> None:
    block = bytes.fromhex("0123456789abcdef") + bytes(8)
    assert block_point(block) == 0x0123456789ABCDEF
    first, last = block_ids_at(5, 9)
    assert block_point(first) == 5
    assert block_point(last) == 9
    assert first < (5).to_bytes(8, "big") + b"\x00" * 7 + b"\x01" < last


@pytest.mark.parametrize("count", [1, 2, 3])
def test_arcs_hold_exactly_the_positions_a_node_serves(count: int) -> None:
    zoned = [RingNode("a", zone="z1"), RingNode("b", zone="z1"), RingNode("c", zone="z2")]
    for ring in (_ring(*FIVE), Ring(zoned, vnodes=16), Ring([RingNode("solo")], vnodes=3)):
        rng = random.Random(count)
        points = [rng.randrange(RING_SIZE) for _ in range(2000)] + [0, RING_SIZE - 1]
        points += [p + d for p in ring._points for d in (-1, 0, 1) if 0 <= p + d < RING_SIZE]
        for node in ring._nodes:
            arcs = ring.arcs(node, count)
            assert arcs == sorted(arcs)
            assert all(a[1] + 1 < b[0] for a, b in itertools.pairwise(arcs))  # merged
            for point in points:
                inside = any(first <= point <= last for first, last in arcs)
                assert inside == (node in ring.preference_at(point, count))


def test_every_position_is_served_by_count_nodes() -> None:
    ring = _ring(*FIVE)
    share = {node: sum(last - first + 1 for first, last in ring.arcs(node, 3)) for node in FIVE}
    assert sum(share.values()) == 3 * RING_SIZE
    assert all(0.4 < size / RING_SIZE < 0.8 for size in share.values())  # about 3/5 each
