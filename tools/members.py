"""`ringfs weight`, `drain`, `remove`, `replace` and `add-node`: changes of the cluster's members.

Each is a change of the cluster map that the nodes agree on (`ringfs.node.cluster.changes`),
made by the first node that answers; the repair passes then move the blocks to where the new
map places them. `add-node` starts one more node in the local cluster of `ringfs up`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

import trio

from ringfs.fs.cluster import Cluster, connected
from ringfs.node.cluster.map import ClusterMap
from ringfs.node.errors import NodeError, Unavailable
from ringfs.tools.args import cluster_access
from ringfs.tools.ctl import ProgressBar
from ringfs.tools.local import LocalCluster, add_local_node, default_data_dir

#: Seconds between two looks at a draining node.
POLL = 1.0


def weight(args: argparse.Namespace) -> int:
    seeds, secret = cluster_access(args)
    cmap = trio.run(_change_map, seeds, secret, "weight", [args.node, args.weight])
    print(f"cluster map epoch {cmap.epoch}: {args.node} has weight {args.weight:g}")
    return 0


def drain(args: argparse.Namespace) -> int:
    seeds, secret = cluster_access(args)
    cmap = trio.run(_change_map, seeds, secret, "drain", [args.node])
    print(f"cluster map epoch {cmap.epoch}: {args.node} is draining")
    if args.wait:
        trio.run(_wait_left, seeds, secret, args.node, sys.stderr)
        print(f"{args.node} has left the cluster")
    return 0


def remove(args: argparse.Namespace) -> int:
    seeds, secret = cluster_access(args)
    cmap = trio.run(_change_map, seeds, secret, "remove", [args.node])
    print(
        f"cluster map epoch {cmap.epoch}: {args.node} is removed; its blocks are copied again "
        "from the others (`ringfs repair --wait` shows when they are all back)"
    )
    return 0


def replace(args: argparse.Namespace) -> int:
    seeds, secret = cluster_access(args)
    cmap = trio.run(_change_map, seeds, secret, "replace", [args.old, args.new])
    print(
        f"cluster map epoch {cmap.epoch}: {args.new} takes the place of {args.old}, which is "
        f"{cmap.node(args.old).state}"
    )
    return 0


def add_node(args: argparse.Namespace) -> int:
    name = add_local_node(LocalCluster((args.data or default_data_dir()).absolute()))
    print(f"node {name} joined the local cluster")
    return 0


async def _change_map(
    seeds: tuple[str, ...], secret: bytes, operation: str, arguments: list[Any]
) -> ClusterMap:
    """Have a node make the change; the map it gives. Raises NodeError (EINVAL: the change
    cannot be made, and why), Unavailable when no node could."""
    async with connected(seeds, secret) as cluster:
        tried = []
        for node in cluster.map.holders():
            tried.append(node.address)
            try:
                params = [operation, arguments]
                wire = await cluster.pool.call(node.address, "map.change", params, 40.0)
            except Unavailable:
                continue
            return ClusterMap.from_wire(wire)
        raise Unavailable("the cluster map (no node made the change)", tried)


async def _wait_left(seeds: tuple[str, ...], secret: bytes, node_id: str, out: TextIO) -> None:
    """Show the draining node's blocks going down, until it has left the map."""
    async with connected(seeds, secret) as cluster:
        bar = ProgressBar(out)
        most, fraction = 1, 0.0
        while (await cluster.refresh_map()).node(node_id).state == "draining":
            held = await _blocks_held(cluster, node_id)
            if held is None:
                bar.show(fraction, f"{node_id} does not answer")
            else:
                most = max(most, held)
                fraction = 1 - held / most
                bar.show(fraction, f"{held} blocks left on {node_id}")
            await trio.sleep(POLL)
        bar.end()


async def _blocks_held(cluster: Cluster, node_id: str) -> int | None:
    try:
        stats = await cluster.pool.call(cluster.map.node(node_id).address, "node.stats", [], 3.0)
    except (Unavailable, NodeError):
        return None
    return int(stats["blocks"])
