"""Consistent hash ring with virtual nodes: which nodes hold a key.

Pure standard library, so clients, nodes and tools agree on placement without any I/O. Every
point comes from blake2b, never the builtin `hash()`, which is salted per process: two
processes must compute the same preference list for the same key and membership.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass

#: Virtual nodes per unit of weight: enough points to keep every node within a few percent
#: of its fair share, few enough that building the ring stays cheap.
DEFAULT_VNODES = 128


@dataclass(frozen=True)
class RingNode:
    """A ring member: its id, its relative capacity, its failure zone ("" = none) and the name
    its points come from ("" = its id; see `Ring`)."""

    node_id: str
    weight: float = 1.0
    zone: str = ""
    name: str = ""


def _point(data: bytes) -> int:
    """The 64-bit ring position of `data`: stable across processes and platforms."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def key_point(key: bytes) -> int:
    """The ring position of a key."""
    return _point(key)


#: One past the largest ring position.
RING_SIZE = 2**64


def block_point(block_id: bytes) -> int:
    """The ring position of a block: the first 8 bytes of its id.

    Ids are random, so blocks spread as evenly as hashed keys would; and the blocks of one
    arc of the ring are one range of ids, which the metadata lists in order, so a node can
    ask for exactly the blocks it should hold (see `Ring.arcs`).
    """
    return int.from_bytes(block_id[:8], "big")


def block_ids_at(first: int, last: int) -> tuple[bytes, bytes]:
    """The smallest and the largest block id whose ring position is within `first..last`."""
    return first.to_bytes(8, "big") + bytes(8), last.to_bytes(8, "big") + b"\xff" * 8


class Ring:
    """An immutable ring; build a new one when membership changes.

    Node X owns `round(weight * vnodes)` points (at least one), point i being
    `blake2b(f"{X}\\x00{i}")`, X its name (its id unless it took another node's), so a node's
    points depend only on its own name and weight: adding or removing a node moves only the
    keys that land on its points, and a node that takes a departed node's name takes exactly
    that node's keys.
    """

    def __init__(self, nodes: Iterable[RingNode], vnodes: int = DEFAULT_VNODES) -> None:
        """Raises ValueError for duplicate ids, a non-positive weight or vnodes < 1."""
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, not {vnodes}")
        self._nodes: dict[str, RingNode] = {}
        for node in nodes:
            if node.node_id in self._nodes:
                raise ValueError(f"duplicate node id {node.node_id!r}")
            if not (math.isfinite(node.weight) and node.weight > 0):
                raise ValueError(f"node {node.node_id!r}: weight must be positive")
            self._nodes[node.node_id] = node
        # Ties between equal points (practically never) break by node id, so order is total.
        ring = sorted(
            (_point(f"{node.name or node.node_id}\x00{i}".encode()), node.node_id)
            for node in self._nodes.values()
            for i in range(max(1, round(node.weight * vnodes)))
        )
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]
        self._zoned = any(node.zone for node in self._nodes.values())
        self._zone_count = len({node.zone for node in self._nodes.values()})

    def __len__(self) -> int:
        return len(self._nodes)

    def preference(self, key: bytes, count: int) -> list[str]:
        """The preference list of a key (see `preference_at`)."""
        return self.preference_at(key_point(key), count)

    def preference_at(self, point: int, count: int) -> list[str]:
        """The first `count` distinct node ids clockwise from `point` (fewer if the ring is
        smaller).

        With zones configured, the first node of each zone not yet used comes first (ring
        order), then the remaining nodes in ring order, so replicas spread over zones.
        """
        count = min(count, len(self._nodes))
        if count <= 0:
            return []
        walk = self._walk(bisect.bisect_left(self._points, point), count)
        if not self._zoned:
            return walk[:count]
        zones: set[str] = set()
        first: list[str] = []
        for node_id in walk:
            zone = self._nodes[node_id].zone
            if zone not in zones:
                zones.add(zone)
                first.append(node_id)
        first = first[:count]
        rest = [node_id for node_id in walk if node_id not in first]
        return first + rest[: count - len(first)]

    def arcs(self, node_id: str, count: int) -> list[tuple[int, int]]:
        """The ring positions whose first `count` preferred nodes include `node_id`, as sorted
        inclusive ranges `(first, last)`: the share of the ring a node serves."""
        arcs: list[tuple[int, int]] = []
        for index, point in enumerate(self._points):
            if node_id in self.preference_at(point, count):
                # The positions after the point before, up to this one, walk from here; the
                # arc into the first point also takes those after the last.
                if index == 0:
                    arcs += [(0, point), (self._points[-1] + 1, RING_SIZE - 1)]
                else:
                    arcs.append((self._points[index - 1] + 1, point))
        merged: list[tuple[int, int]] = []
        for first, last in sorted(arc for arc in arcs if arc[0] <= arc[1]):
            if merged and merged[-1][1] + 1 >= first:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        return merged

    def primary(self, key: bytes) -> str | None:
        """The first node of the key's preference list; None for an empty ring."""
        preferred = self.preference(key, 1)
        return preferred[0] if preferred else None

    def _walk(self, start: int, count: int) -> list[str]:
        """Distinct node ids in ring order from point index `start`, just far enough to decide
        `count`.

        Without zones that is `count` nodes. With zones it also needs one node of each of
        the first `count` zones met (or of every zone), so it may walk further.
        """
        zone_target = min(count, self._zone_count)
        seen: dict[str, None] = {}
        zones: set[str] = set()
        size = len(self._owners)
        for step in range(size):
            owner = self._owners[(start + step) % size]
            if owner in seen:
                continue
            seen[owner] = None
            zones.add(self._nodes[owner].zone)
            if len(seen) >= count and (not self._zoned or len(zones) >= zone_target):
                break
        return list(seen)
