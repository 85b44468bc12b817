"""Agreeing on the cluster map: the first map the register holds is the cluster's.

Each node, when it starts, proposes to the register (`ringfs.node.register`) a change that
founds the cluster with the map it was started with, under a new random cluster id, if the
register is still empty, and otherwise keeps what is there. Every node thus learns the one map
the cluster agreed on and its id. One started with other members or replication settings stops
with a clear error instead of forming a second cluster with its own placement and its own
metadata group.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import trio

from ringfs.node.cluster.map import ClusterMap
from ringfs.node.cluster.paxos import Change, InDoubt
from ringfs.node.errors import ConfigError, NodeError, Unavailable
from ringfs.node.register import NodeRegister

log = logging.getLogger(__name__)

#: Seconds one round of proposals may take before the node says it is still waiting.
ROUND = 30.0


def founding(mine: ClusterMap, cluster_id: str) -> Change:
    """The change each node proposes at start: found the cluster with `mine` as cluster
    `cluster_id` if nothing is agreed yet, else keep what is."""
    founded = dataclasses.replace(mine.pinned(), cluster_id=cluster_id).to_wire()

    def change(current: Any) -> tuple[Any, Any]:
        return (founded if current is None else current), None

    return change


def disagreement(agreed: ClusterMap, mine: ClusterMap) -> str | None:
    """Why a node started with `mine` cannot serve in the cluster that agreed on `agreed`."""
    ours = sorted(node.node_id for node in mine.nodes)
    theirs = sorted(node.node_id for node in agreed.nodes)
    if ours != theirs:
        return (
            f"this node was started with members {', '.join(ours)}, but the cluster agreed on "
            f"{', '.join(theirs)}"
        )
    if mine.replicas != agreed.replicas:
        return (
            f"this node was started with {mine.replicas} replicas, but the cluster agreed on "
            f"{agreed.replicas}"
        )
    our_meta, their_meta = _meta_ids(mine), _meta_ids(agreed)
    if our_meta != their_meta:
        return (
            f"this node takes {', '.join(our_meta)} for the meta group, but the cluster agreed "
            f"on {', '.join(their_meta)}"
        )
    if mine.cluster_id and mine.cluster_id != agreed.cluster_id:
        return f"this node belongs to cluster {mine.cluster_id}, not {agreed.cluster_id}"
    return None


def _meta_ids(cmap: ClusterMap) -> list[str]:
    return [node.node_id for node in cmap.meta_nodes()]


async def agree_on_map(register: NodeRegister, mine: ClusterMap) -> ClusterMap:
    """The map the cluster agreed on, with its cluster id, once a majority of the register's
    acceptors answered (it waits as long as it takes, saying so every `ROUND` seconds).

    Raises ConfigError when that map is not this node's."""
    change = founding(mine, mine.cluster_id or os.urandom(8).hex())
    while True:
        try:
            _, value = await register.propose(change, trio.current_time() + ROUND)
        except (Unavailable, InDoubt) as exc:
            log.info("cluster map: not agreed yet (%s); asking again", exc)
            continue
        try:
            agreed = ClusterMap.from_wire(value)
        except NodeError as exc:
            raise ConfigError(f"the cluster map register holds no map: {exc}") from exc
        problem = disagreement(agreed, mine)
        if problem is not None:
            raise ConfigError(problem)
        log.info("cluster %s: map agreed (%d nodes)", agreed.cluster_id, len(agreed.nodes))
        return agreed
