"""`ringfs status`: the cluster map, and each node's reachability, blocks, bytes and capacity."""

from __future__ import annotations

import argparse
from typing import Any

import trio

from ringfs.fs.cluster import Cluster, ClusterConfig
from ringfs.node.blocks.gc import LIST_LIMIT
from ringfs.node.cluster.map import NodeInfo
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools.args import cluster_access


def status(args: argparse.Namespace) -> int:
    seeds, secret = cluster_access(args)
    print(trio.run(_status, seeds, secret))
    return 0


async def _status(seeds: tuple[str, ...], secret: bytes) -> str:
    config = ClusterConfig(seeds=seeds, client=ClientConfig(secret=secret, connect_timeout=2.0))
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.create(config, nursery=nursery)
        stats = await cluster.node_stats()
        members = await cluster.meta_status()
        await cluster.aclose()
        nursery.cancel_scope.cancel()
    cmap = cluster.map
    roles = {info.node_id: f"meta {s['role']}" if s else "meta" for info, s in members}
    lines = [
        f"cluster map epoch {cmap.epoch}, {len(cmap.nodes)} nodes, "
        f"replicas {cmap.replica_count()} (write quorum {cmap.write_quorum()})",
        f"{'NODE':<10} {'ADDRESS':<22} {'STATE':<12} {'BLOCKS':>8} {'DATA':>10} "
        f"{'CAPACITY':>10} {'FREE':>10}  ROLE",
    ]
    for info, node_stats in stats:
        lines.append(
            _node_line(info.node_id, info.address, node_stats, roles.get(info.node_id, ""))
        )
    return "\n".join([*lines, "", _garbage_line(stats), "", *_meta_lines(members)])


def _node_line(node_id: str, address: str, stats: dict[str, Any] | None, role: str) -> str:
    if stats is None:
        return f"{node_id:<10} {address:<22} {'unreachable':<12}"
    return (
        f"{node_id:<10} {address:<22} {'up':<12} {stats['blocks']:>8} "
        f"{_human(stats['bytes']):>10} {_human(stats['capacity']):>10} "
        f"{_human(stats['free']):>10}  {role}"
    )


def _meta_lines(members: list[tuple[NodeInfo, dict[str, Any] | None]]) -> list[str]:
    """The meta group: leader, term, and each member's log position, lag and snapshot."""
    answering = [s for _, s in members if s is not None]
    leader = next((s for s in answering if s["role"] == "leader"), None)
    term = max((s["term"] for s in answering), default=0)
    head = f"meta group: leader {leader['node_id'] if leader else 'none (election)'}, term {term}"
    if leader is not None:
        head += f", commit index {leader['commit_index']}"
    lines = [head, f"{'MEMBER':<10} {'ROLE':<14} {'LOG INDEX':>10} {'APPLIED':>9} "
                   f"{'LAG':>6} {'SNAPSHOT':>9}"]  # fmt: skip
    for info, member in members:
        if member is None:
            lines.append(f"{info.node_id:<10} {'unreachable':<14}")
            continue
        lag = leader["last_index"] - member["last_index"] if leader is not None else 0
        lines.append(
            f"{info.node_id:<10} {member['role']:<14} {member['last_index']:>10} "
            f"{member['applied_index']:>9} {max(lag, 0):>6} {member['snapshot_index']:>9}"
        )
    return lines


def _garbage_line(stats: list[tuple[NodeInfo, dict[str, Any] | None]]) -> str:
    """The garbage collector's backlog and progress, as the leader's collector counts them."""
    active = [(i, s["gc"]) for i, s in stats if s is not None and s["gc"] and s["gc"]["active"]]
    if not active:
        return "garbage: no collector running (no meta leader)"
    info, gc = active[0]
    waiting = f"{gc['waiting']}+" if gc["waiting"] >= LIST_LIMIT else str(gc["waiting"])
    line = f"garbage: {waiting} blocks waiting, {gc['collected']} collected (on {info.node_id})"
    if gc["failing"]:
        line += f"; deletes failing on {', '.join(gc['failing'])}"
    return line


def _human(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
