"""Changes of the cluster map, as pure functions of the map.

Each returns the next map (epoch + 1), the same map when it is made already (so that a retried
change is harmless), or raises ValueError saying, in one line, why the change cannot be made.
The node that proposes one applies it to the register's current map (`ringfs.node.register`),
so two operators racing cannot undo each other's change.

A change that takes a member of the meta group out of the placements (drain, remove, replace)
puts another in its place in the map's meta group, which the Raft group then follows one
server at a time (`ringfs.node.meta.membership`). A member marked out stays in it: it is
expected back, and Raft carries on without one member meanwhile.

Every change adds or removes at most one acceptor of the register (every member but a removed
one): a majority of the acceptors before and a majority after then always share a member, which
is what lets a proposer that still goes by the older set run safely (see
`ringfs.node.cluster.paxos.Proposal`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ringfs.node.cluster.keys import MAX_KEYS, SALT_SIZE, check_key_name
from ringfs.node.cluster.map import PLACED, ClusterMap, NodeInfo


def add(
    cmap: ClusterMap, node_id: str, host: str, port: int, weight: float, zone: str
) -> ClusterMap:
    """A new node joins: it takes placements at once, and reads look there last until its
    first complete repair pass filled it (`activate`)."""
    _check_weight(weight)
    joining = NodeInfo(node_id, host, port, float(weight), zone, state="joining")
    for node in cmap.nodes:
        if node.node_id == node_id:
            if node.state == "removed":
                raise ValueError(f"node id {node_id} was removed: a new node takes a new id")
            if (node.host, node.port) != (host, port):
                raise ValueError(f"node {node_id} is a member already, at {node.address}")
            return cmap  # joined already (a retry)
        if node.state != "removed" and (node.host, node.port) == (host, port):
            raise ValueError(f"{joining.address} is the address of node {node.node_id}")
    return replace(cmap, nodes=(*cmap.nodes, joining), epoch=cmap.epoch + 1)


def activate(cmap: ClusterMap, node_id: str) -> ClusterMap:
    """A joining node holds every block placed on it: reads no longer pass it over."""
    state = _member(cmap, node_id).state
    if state == "active":
        return cmap
    _expect(node_id, state, "joining")
    return _changed(cmap, node_id, state="active")


def reweigh(cmap: ClusterMap, node_id: str, weight: float) -> ClusterMap:
    """`node_id` takes a share of the ring in proportion to `weight` (1 by default)."""
    _member(cmap, node_id)
    _check_weight(weight)
    return _changed(cmap, node_id, weight=float(weight))


def drain(cmap: ClusterMap, node_id: str) -> ClusterMap:
    """`node_id` takes no placement any more: the others' repair passes copy its blocks to
    where the ring now places them, and its own pass deletes each once they hold it. It still
    serves what it holds meanwhile, and leaves the cluster (`leave`) once it holds nothing."""
    node = _member(cmap, node_id)
    if node.state == "draining":
        return cmap
    _expect(node_id, node.state, "active", "joining")
    _enough_left(cmap, node_id, "draining")
    return _out_of_meta(_changed(cmap, node_id, state="draining"), node_id)


def leave(cmap: ClusterMap, node_id: str) -> ClusterMap:
    """A drained node that holds nothing any more leaves the cluster."""
    state = _member(cmap, node_id).state
    if state == "removed":
        return cmap
    _expect(node_id, state, "draining")
    return _changed(cmap, node_id, state="removed")


def remove(cmap: ClusterMap, node_id: str) -> ClusterMap:
    """`node_id` is gone for good (a dead node): the survivors' repair passes copy its blocks
    from the other copies to where the ring now places them."""
    node = _member(cmap, node_id)
    if node.state == "removed":
        return cmap
    if node.state in PLACED:
        _enough_left(cmap, node_id, "removing")
    return _out_of_meta(_changed(cmap, node_id, state="removed"), node_id)


def mark_out(cmap: ClusterMap, node_id: str) -> ClusterMap:
    """`node_id` was down longer than the out-time: its blocks are placed on the others and
    copied there, as for a removed node, but it joins again when it comes back (`rejoin`)."""
    node = _member(cmap, node_id)
    if node.state == "down-out":
        return cmap
    _expect(node_id, node.state, "active", "joining")
    _enough_left(cmap, node_id, "marking out")
    return _changed(cmap, node_id, state="down-out")


def rejoin(cmap: ClusterMap, node_id: str) -> ClusterMap:
    """A node marked out is back: it joins again (filling up what changed while it was out)."""
    state = _member(cmap, node_id).state
    if state in PLACED:
        return cmap
    _expect(node_id, state, "down-out")
    return _changed(cmap, node_id, state="joining")


def replace_node(cmap: ClusterMap, old_id: str, new_id: str) -> ClusterMap:
    """The node `new_id` (best just joined: it holds little of its own yet) takes the place of
    `old_id` on the ring (its points, weight and zone), so only `old_id`'s blocks move, and
    they move to `new_id`. `old_id` drains (or, if it was out, is removed)."""
    old, new = _member(cmap, old_id), _member(cmap, new_id)
    if new.ring == old.ring_name and old.state not in PLACED:
        return cmap  # replaced already
    _expect(new_id, new.state, "joining", "active")
    _expect(old_id, old.state, "active", "joining", "down-out")
    after = "removed" if old.state == "down-out" else "draining"
    nodes = tuple(
        replace(new, ring=old.ring_name, weight=old.weight, zone=old.zone)
        if node.node_id == new_id
        else replace(node, state=after)
        if node.node_id == old_id
        else node
        for node in cmap.nodes
    )
    replaced = replace(cmap, nodes=nodes, epoch=cmap.epoch + 1)
    if new_id in cmap.meta:
        return _out_of_meta(replaced, old_id)
    return replace(replaced, meta=tuple(new_id if n == old_id else n for n in cmap.meta))


def issue_key(cmap: ClusterMap, name: str, salt: str) -> ClusterMap:
    """The client key `name`, derived with `salt` (hex), is in force from this map on."""
    check_key_name(name)
    try:
        salt_bytes = bytes.fromhex(salt)
    except ValueError:
        salt_bytes = b""
    if len(salt_bytes) != SALT_SIZE:
        raise ValueError(f"a key's salt is {SALT_SIZE} bytes in hex")
    held = cmap.key_salt(name)
    if held == salt_bytes:
        return cmap  # issued already (a retry)
    if held is not None:
        raise ValueError(f"key {name} exists: revoke it first, or choose another name")
    if len(cmap.keys) >= MAX_KEYS:
        raise ValueError(f"the cluster has {MAX_KEYS} keys, the most it holds: revoke some")
    keys = tuple(sorted((*cmap.keys, (name, salt_bytes))))
    return replace(cmap, keys=keys, epoch=cmap.epoch + 1)


def revoke_key(cmap: ClusterMap, name: str) -> ClusterMap:
    """The client key `name` is refused from this map on; every node closes the connections
    it opened."""
    if cmap.key_salt(name) is None:
        return cmap  # revoked already, or never issued
    keys = tuple(key for key in cmap.keys if key[0] != name)
    return replace(cmap, keys=keys, epoch=cmap.epoch + 1)


def _member(cmap: ClusterMap, node_id: str) -> NodeInfo:
    try:
        return cmap.node(node_id)
    except KeyError:
        raise ValueError(f"no node {node_id!r} in the cluster map") from None


def _expect(node_id: str, state: str, *allowed: str) -> None:
    if state not in allowed:
        raise ValueError(f"node {node_id} is {state}, not {' or '.join(allowed)}")


def _check_weight(weight: float) -> None:
    if not (math.isfinite(weight) and 0 < weight <= 100):
        raise ValueError(f"a weight is a number above 0 and at most 100, not {weight}")


def _out_of_meta(cmap: ClusterMap, node_id: str) -> ClusterMap:
    """`cmap` with `node_id`, which takes no placement any more, out of its meta group, and
    the ring's next pick in its place (the Raft group follows: the new member is added
    first, then `node_id` removed)."""
    if node_id not in cmap.meta:
        return cmap
    successor = cmap.successor(cmap.meta)
    meta = tuple(
        chosen
        for chosen in (successor if n == node_id else n for n in cmap.meta)
        if chosen is not None
    )
    return replace(cmap, meta=meta)


def _enough_left(cmap: ClusterMap, node_id: str, doing: str) -> None:
    staying = sum(1 for node in cmap.nodes if node.state in PLACED) - 1
    if staying < cmap.replicas:
        raise ValueError(
            f"{doing} {node_id} would leave {staying} nodes for {cmap.replicas} copies"
        )


def _changed(cmap: ClusterMap, node_id: str, **fields: Any) -> ClusterMap:
    """The next map, with `fields` changed in the entry of `node_id`."""
    nodes = tuple(
        replace(node, **fields) if node.node_id == node_id else node for node in cmap.nodes
    )
    return replace(cmap, nodes=nodes, epoch=cmap.epoch + 1)


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _port(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(value: object) -> bool:
    return isinstance(value, str)


#: Each change by name: the function, and a check for each of its arguments (after the map).
OPERATIONS: dict[str, tuple[Callable[..., ClusterMap], tuple[Callable[[object], bool], ...]]] = {
    "add": (add, (_text, _text, _port, _number, _text)),
    "activate": (activate, (_text,)),
    "weight": (reweigh, (_text, _number)),
    "drain": (drain, (_text,)),
    "leave": (leave, (_text,)),
    "remove": (remove, (_text,)),
    "out": (mark_out, (_text,)),
    "rejoin": (rejoin, (_text,)),
    "replace": (replace_node, (_text, _text)),
    "issue-key": (issue_key, (_text, _text)),
    "revoke-key": (revoke_key, (_text,)),
}


def change_map(cmap: ClusterMap, operation: str, arguments: list[object]) -> ClusterMap:
    """Apply the operation named `operation`; ValueError for an unknown one or bad arguments."""
    if operation not in OPERATIONS:
        raise ValueError(f"unknown map change {operation!r}")
    function, checks = OPERATIONS[operation]
    if len(arguments) != len(checks) or not all(
        check(argument) for check, argument in zip(checks, arguments, strict=True)
    ):
        names = list(inspect.signature(function).parameters)[1:]  # after the map
        raise ValueError(f"{operation} takes {', '.join(names)}")
    return function(cmap, *arguments)
