"""What is wrong with a cluster, in words, from what `ringfs status` gathered.

Pure: the cluster map, each node's `node.stats` (None for a node that does not answer) and each
meta-group member's `meta.status`. Each problem is one sentence an operator can act on; no
problem, an empty list. These are also what to alert on (docs/operations.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from ringfs.node.cluster.map import HOLDING, ClusterMap, NodeInfo

#: Log entries a member may trail its leader by before it is said to lag.
LAG_ENTRIES = 1000
#: Share of a disk under which the room left for blocks (free space beyond the reserve kept for
#: the metadata) is said to be low: above the high-water mark, block writes stop.
LOW_ROOM = 0.10

Answers = Sequence[tuple[NodeInfo, dict[str, Any] | None]]


def problems(cmap: ClusterMap, nodes: Answers, members: Answers) -> list[str]:
    """Everything `ringfs status` should say is wrong, most urgent first."""
    found = _meta_problems(cmap, members)
    for info, stats in nodes:
        if stats is None:
            if info.state in HOLDING:
                found.append(f"node {info.node_id} ({info.address}) does not answer")
            continue
        found += _disk_problems(info.node_id, stats)
    for info, _ in nodes:
        if info.state == "down-out":
            found.append(
                f"node {info.node_id} is marked out (down longer than its out-time): its "
                "blocks are placed on the others"
            )
    found += _copies_problems(nodes)
    return found


def _meta_problems(cmap: ClusterMap, members: Answers) -> list[str]:
    wanted = set(cmap.meta_ids())
    answering = [(info, s) for info, s in members if s is not None]
    leader = next((s for _, s in answering if s["role"] == "leader"), None)
    if leader is None:
        return ["the meta group has no leader: metadata calls fail until it elects one"]
    found = []
    for info, status in members:
        if info.node_id not in wanted:
            continue
        if status is None:
            found.append(f"meta-group member {info.node_id} does not answer")
        elif status.get("failure"):
            found.append(
                f"meta-group member {info.node_id} stopped: its storage failed "
                f"({status['failure']})"
            )
        elif (lag := leader["last_index"] - status["last_index"]) > LAG_ENTRIES:
            found.append(
                f"meta-group member {info.node_id} lags {lag} log entries behind the leader"
            )
    if set(leader["voters"]) != wanted:
        found.append(
            f"the meta group is changing: its voters are {', '.join(leader['voters'])}, the map "
            f"wants {', '.join(sorted(wanted))}"
        )
    return found


def _disk_problems(node_id: str, stats: dict[str, Any]) -> list[str]:
    room = stats["free"] - stats["reserve"]
    if room <= 0:
        return [
            f"node {node_id}'s disk is full: it refuses block writes (free space is down to "
            "the reserve kept for the metadata)"
        ]
    if stats["capacity"] and room < LOW_ROOM * stats["capacity"]:
        share = 100 * (1 - room / stats["capacity"])
        return [f"node {node_id}'s disk is {share:.1f}% used: block writes stop at 100%"]
    return []


def missing_copies(stats: Iterable[dict[str, Any]]) -> int:
    """Copies missing on the nodes that should hold them, as the nodes' last (or current)
    repair passes found and have not stored yet."""
    missing = 0
    for node in stats:
        repair = node["repair"]
        record = repair["current"] or repair["last"]
        if record is not None:
            missing += record["missing"] - record["repaired"]
    return missing


def _copies_problems(nodes: Answers) -> list[str]:
    missing = missing_copies(stats for _, stats in nodes if stats is not None)
    if not missing:
        return []
    return [
        f"{missing} copies are missing on the nodes that should hold them (fewer copies than "
        "the replicas, or on other nodes): repair passes are copying them"
    ]
