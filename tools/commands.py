"""What each `ringfs` subcommand does, given parsed arguments."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path
from typing import Any

import trio

from ringfs.fs import mount as fs_mount
from ringfs.fs.cluster import Cluster, ClusterConfig
from ringfs.node import daemon
from ringfs.node.client import ClientConfig, split_address
from ringfs.node.clustermap import parse_members
from ringfs.tools import background
from ringfs.tools import bench as bench_tool
from ringfs.tools.local import (
    LocalCluster,
    default_data_dir,
    ensure_secret,
    read_secret,
    running_nodes,
)


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


def _mountpoint(path: Path) -> Path:
    path = path.absolute()
    if not path.is_dir():
        raise UserError(f"mountpoint {path} does not exist or is not a directory")
    if os.path.ismount(path):
        raise UserError(f"{path} is already a mount point")
    return path


def _options(args: argparse.Namespace) -> list[str]:
    return [opt for value in args.options or [] for opt in value.split(",") if opt]


def _passthrough(args: argparse.Namespace) -> list[str]:
    """Flags a background child must get again."""
    flags = ["--debug"] if args.debug else []
    if args.debug_modules:
        flags += ["--debug-modules", args.debug_modules]
    return flags


def _seeds(spec: str) -> tuple[str, ...]:
    """Addresses from "HOST:PORT,..." or "ID=HOST:PORT,..."."""
    seeds = tuple(part.split("=", 1)[-1].strip() for part in spec.split(",") if part.strip())
    for seed in seeds:
        split_address(seed)
    if not seeds:
        raise UserError("no node address given")
    return seeds


# -- node ------------------------------------------------------------------------------------


def node(args: argparse.Namespace) -> int:
    host, port = split_address(args.listen)
    config = daemon.NodeConfig(
        node_id=args.name,
        data_dir=args.data.absolute(),
        secret=read_secret(args.secret_file),
        host=host,
        port=port,
        members=parse_members(args.cluster) if args.cluster else None,
        replicas=args.replicas,
        chunk_size=args.chunk_size,
    )
    try:
        trio.run(_serve_node, config)
    except daemon.ConfigError as exc:
        raise UserError(str(exc)) from None
    return 0


async def _serve_node(config: daemon.NodeConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.run, config)
            # The line supervisors and tests wait for: the node is serving.
            print(f"ready {config.node_id} {config.host}:{port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


# -- mount / up ------------------------------------------------------------------------------


async def _mount_and_report(config: fs_mount.MountConfig, ready_fd: int | None) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(fs_mount.run, config)
        background.report(ready_fd, background.READY)


def _mount_config(
    seeds: tuple[str, ...], secret: bytes, mountpoint: Path, args: argparse.Namespace
) -> fs_mount.MountConfig:
    return fs_mount.MountConfig(
        cluster=ClusterConfig(seeds=seeds, client=ClientConfig(secret=secret)),
        mountpoint=mountpoint,
        fuse_options=tuple(_options(args)),
    )


def mount(args: argparse.Namespace) -> int:
    mountpoint = _mountpoint(args.mountpoint)
    seeds = _seeds(args.cluster)
    secret = read_secret(args.secret_file)
    if not args.foreground:
        argv = [
            *_passthrough(args),
            "mount",
            args.cluster,
            str(mountpoint),
            "--secret-file",
            str(args.secret_file.absolute()),
            "-f",
            *[f"-o{opt}" for opt in _options(args)],
        ]
        background.start(argv, default_data_dir() / f"mount-{mountpoint.name or 'root'}.log")
        return 0
    trio.run(_mount_and_report, _mount_config(seeds, secret, mountpoint, args), args.ready_fd)
    return 0


def up(args: argparse.Namespace) -> int:
    cluster = LocalCluster((args.data or default_data_dir()).absolute())
    mountpoint = _mountpoint(args.mountpoint)
    secret = ensure_secret(cluster.secret_file)
    if not args.foreground:
        argv = [
            *_passthrough(args),
            "up",
            str(mountpoint),
            "--data",
            str(cluster.data_dir),
            "-f",
            *[f"-o{opt}" for opt in _options(args)],
        ]
        background.start(argv, cluster.log_file)
        print(
            f"ringfs is mounted on {mountpoint} (data in {cluster.data_dir}); "
            f"unmount with: fusermount3 -u {mountpoint}"
        )
        return 0
    with running_nodes(cluster, debug=args.debug) as spec:
        config = _mount_config(_seeds(spec), secret, mountpoint, args)
        trio.run(_mount_and_report, config, args.ready_fd)
    return 0


# -- status ----------------------------------------------------------------------------------


def status(args: argparse.Namespace) -> int:
    if args.cluster:
        if args.secret_file is None:
            raise UserError("--cluster needs --secret-file")
        seeds, secret = _seeds(args.cluster), read_secret(args.secret_file)
    else:
        local = LocalCluster((args.data or default_data_dir()).absolute())
        spec = local.members()
        if spec is None:
            raise UserError(
                f"no local cluster in {local.data_dir}; give --cluster and "
                "--secret-file for another one"
            )
        seeds, secret = _seeds(spec), read_secret(local.secret_file)
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


# -- bench -----------------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> int:
    if not args.mountpoint.is_dir():
        raise UserError(f"{args.mountpoint} is not a directory")
    bench_tool.run(bench_tool.BenchConfig(args.mountpoint, args.local, args.size, args.files))
    return 0
