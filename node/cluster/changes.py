"""Changes of the cluster map an operator asks for, as pure functions of the map.

Each returns the next map (epoch + 1) or raises ValueError saying, in one line, why the change
cannot be made. The node that proposes one applies it to the register's current map
(`ringfs.node.register`), so two operators racing cannot undo each other's change.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from ringfs.node.cluster.map import ClusterMap, NodeInfo

#: Changes by name, with the number of arguments each takes (see `change_map`).
OPERATIONS = {"weight": 2, "drain": 1}


def reweigh(cmap: ClusterMap, node_id: str, weight: float) -> ClusterMap:
    """`node_id` takes a share of the ring in proportion to `weight` (1 by default)."""
    _member(cmap, node_id)
    if not (math.isfinite(weight) and 0 < weight <= 100):
        raise ValueError(f"a weight is a number above 0 and at most 100, not {weight}")
    return _changed(cmap, node_id, weight=float(weight))


def drain(cmap: ClusterMap, node_id: str) -> ClusterMap:
    """`node_id` takes no placement any more: the others' repair passes copy its blocks to
    where the ring now places them, and its own pass deletes each once they hold it. It still
    serves what it holds meanwhile."""
    state = _member(cmap, node_id).state
    if state != "up":
        raise ValueError(f"node {node_id} is {state}, not up")
    if node_id in {node.node_id for node in cmap.meta_nodes()}:
        raise ValueError(f"node {node_id} is in the meta group, which cannot move yet")
    staying = sum(1 for node in cmap.nodes if node.state == "up") - 1
    if staying < cmap.replicas:
        raise ValueError(
            f"draining {node_id} would leave {staying} nodes for {cmap.replicas} copies"
        )
    return _changed(cmap, node_id, state="draining")


def _member(cmap: ClusterMap, node_id: str) -> NodeInfo:
    try:
        return cmap.node(node_id)
    except KeyError:
        raise ValueError(f"no node {node_id!r} in the cluster map") from None


def _changed(cmap: ClusterMap, node_id: str, **fields: Any) -> ClusterMap:
    """The next map, with `fields` changed in the entry of `node_id`."""
    nodes = tuple(
        replace(node, **fields) if node.node_id == node_id else node for node in cmap.nodes
    )
    return replace(cmap, nodes=nodes, epoch=cmap.epoch + 1)


def change_map(cmap: ClusterMap, operation: str, arguments: list[object]) -> ClusterMap:
    """Apply the operation named `operation`; ValueError for an unknown one or bad arguments."""
    if operation not in OPERATIONS or len(arguments) != OPERATIONS[operation]:
        raise ValueError(f"unknown map change {operation!r} with {len(arguments)} arguments")
    if operation == "drain":
        if not isinstance(arguments[0], str):
            raise ValueError("drain takes a node id")
        return drain(cmap, arguments[0])
    node_id, weight = arguments
    if (
        not isinstance(node_id, str)
        or not isinstance(weight, int | float)
        or isinstance(weight, bool)
    ):
        raise ValueError("weight takes a node id and a number")
    return reweigh(cmap, node_id, float(weight))
