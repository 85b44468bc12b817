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
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools.args import cluster_access
from ringfs.tools.ctl import ProgressBar, wait_whole
from ringfs.tools.local import LocalCluster, add_local_node, default_data_dir

#: Seconds between two looks at a draining node, or at the epochs of the nodes.
POLL = 0.25


def weight(args: argparse.Namespace) -> int:
    seeds, client = cluster_access(args)
    cmap = trio.run(change_map, seeds, client, "weight", [args.node, args.weight])
    print(f"cluster map epoch {cmap.epoch}: {args.node} has weight {args.weight:g}")
    return 0


def drain(args: argparse.Namespace) -> int:
    seeds, client = cluster_access(args)
    cmap = trio.run(change_map, seeds, client, "drain", [args.node])
    print(f"cluster map epoch {cmap.epoch}: {args.node} is draining")
    if args.wait:
        trio.run(_wait_left, seeds, client, args.node, sys.stderr)
        print(f"{args.node} has left the cluster")
    return 0


def remove(args: argparse.Namespace) -> int:
    seeds, client = cluster_access(args)
    cmap = trio.run(change_map, seeds, client, "remove", [args.node])
    print(f"cluster map epoch {cmap.epoch}: {args.node} is removed")
    if args.wait:
        trio.run(_wait_placed, seeds, client, cmap.epoch, sys.stderr)
        print(f"every block is back to {cmap.replica_count()} copies")
    return 0


def replace(args: argparse.Namespace) -> int:
    seeds, client = cluster_access(args)
    cmap = trio.run(change_map, seeds, client, "replace", [args.old, args.new])
    print(
        f"cluster map epoch {cmap.epoch}: {args.new} takes the place of {args.old}, which is "
        f"{cmap.node(args.old).state}"
    )
    if args.wait:
        if cmap.node(args.old).state == "draining":
            trio.run(_wait_left, seeds, client, args.old, sys.stderr)
        trio.run(_wait_placed, seeds, client, cmap.epoch, sys.stderr)
        print(f"{args.new} holds every block {args.old} held")
    return 0


def add_node(args: argparse.Namespace) -> int:
    name = add_local_node(LocalCluster((args.data or default_data_dir()).absolute()))
    print(f"node {name} joined the local cluster")
    return 0


async def change_map(
    seeds: tuple[str, ...], client: ClientConfig, operation: str, arguments: list[Any]
) -> ClusterMap:
    """Have a node make the change; the map it gives. Raises NodeError (EINVAL: the change
    cannot be made, and why), Unavailable when no node could."""
    async with connected(seeds, client) as cluster:
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


async def _wait_left(
    seeds: tuple[str, ...], client: ClientConfig, node_id: str, out: TextIO
) -> None:
    """Show the draining node's blocks going down, until it has left the map."""
    async with connected(seeds, client) as cluster:
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


async def _wait_placed(
    seeds: tuple[str, ...], client: ClientConfig, epoch: int, out: TextIO
) -> None:
    """Once every node holding blocks goes by map `epoch` or a later one, show their repair
    passes until each has finished one with nothing missing (as `ringfs repair --wait`)."""
    async with connected(seeds, client) as cluster:
        while True:
            cmap = await cluster.refresh_map()
            told = await cluster.ask_all("node.info", cmap.holders())
            if all(info is not None and info["epoch"] >= epoch for _, info in told):
                break
            await trio.sleep(POLL)
        started = await cluster.repair_start()
        await wait_whole(cluster, {n.node_id: s["wanted"] for n, s in started if s}, out)


async def _blocks_held(cluster: Cluster, node_id: str) -> int | None:
    try:
        stats = await cluster.pool.call(cluster.map.node(node_id).address, "node.stats", [], 3.0)
    except (Unavailable, NodeError):
        return None
    return int(stats["blocks"])
