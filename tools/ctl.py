"""`ringfs status`: the cluster map, and each node's reachability, blocks, bytes and capacity."""

from __future__ import annotations

import argparse
from typing import Any

import trio

from ringfs.fs.cluster import Cluster, ClusterConfig
from ringfs.node.client import ClientConfig
from ringfs.tools import args as checks
from ringfs.tools.local import LocalCluster, default_data_dir, read_secret


def status(args: argparse.Namespace) -> int:
    if args.cluster:
        if args.secret_file is None:
            raise checks.UserError("--cluster needs --secret-file")
        seeds, secret = checks.seeds(args.cluster), read_secret(args.secret_file)
    else:
        local = LocalCluster((args.data or default_data_dir()).absolute())
        spec = local.members()
        if spec is None:
            raise checks.UserError(
                f"no local cluster in {local.data_dir}; give --cluster and "
                "--secret-file for another one"
            )
        seeds, secret = checks.seeds(spec), read_secret(local.secret_file)
    print(trio.run(_status, seeds, secret))
    return 0


async def _status(seeds: tuple[str, ...], secret: bytes) -> str:
    config = ClusterConfig(seeds=seeds, client=ClientConfig(secret=secret, connect_timeout=2.0))
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.create(config, nursery=nursery)
        stats = await cluster.node_stats()
        await cluster.aclose()
        nursery.cancel_scope.cancel()
    cmap = cluster.map
    meta = cmap.meta_nodes()[0].node_id
    lines = [
        f"cluster map epoch {cmap.epoch}, {len(cmap.nodes)} nodes, "
        f"replicas {cmap.replica_count()} (write quorum {cmap.write_quorum()}), "
        f"metadata on {meta}",
        f"{'NODE':<10} {'ADDRESS':<22} {'STATE':<12} {'BLOCKS':>8} {'DATA':>10} "
        f"{'CAPACITY':>10} {'FREE':>10}  ROLE",
    ]
    for info, node_stats in stats:
        role = "meta" if info.node_id == meta else ""
        lines.append(_status_line(info.node_id, info.address, node_stats, role))
    return "\n".join(lines)


def _status_line(node_id: str, address: str, stats: dict[str, Any] | None, role: str) -> str:
    if stats is None:
        return f"{node_id:<10} {address:<22} {'unreachable':<12}"
    return (
        f"{node_id:<10} {address:<22} {'up':<12} {stats['blocks']:>8} "
        f"{_human(stats['bytes']):>10} {_human(stats['capacity']):>10} "
        f"{_human(stats['free']):>10}  {role}"
    )


def _human(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
