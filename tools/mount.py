"""`ringfs mount` and `ringfs up`: mount a cluster (an existing one, or a local one started
for the purpose), in the background by default, returning once the mount is ready."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

import trio

from ringfs.fs import mount as fs_mount
from ringfs.fs.cluster import ClusterConfig
from ringfs.node.rpc.client import ClientConfig, split_address
from ringfs.tools import args as checks
from ringfs.tools import background
from ringfs.tools.keys import issued_key
from ringfs.tools.local import (
    LocalCluster,
    LocalNodes,
    default_data_dir,
    ensure_secret,
    keep_private,
    read_key_file,
    read_secret,
    running_nodes,
)

#: The client key the mount of `ringfs up` connects with.
LOCAL_KEY = "up"


async def _mount_and_report(
    config: fs_mount.MountConfig, ready_fd: int | None, local: LocalNodes | None = None
) -> None:
    """Mount until unmounted; for `ringfs up`, start one more `local` node on each SIGUSR1
    (`ringfs add-node`) meanwhile."""
    async with trio.open_nursery() as nursery:
        if local is not None:
            nursery.start_soon(_grow_on_signal, local)
        async with trio.open_nursery() as mounted:  # until unmounted
            await mounted.start(fs_mount.run, config)
            background.report(ready_fd, background.READY)
        nursery.cancel_scope.cancel()


async def _grow_on_signal(local: LocalNodes) -> None:
    with trio.open_signal_receiver(signal.SIGUSR1) as signals:
        async for _ in signals:
            joining = local.start_next()
            await trio.to_thread.run_sync(local.wait_joined, joining)


def _config(
    seeds: tuple[str, ...],
    client: ClientConfig,
    mountpoint: Path,
    args: argparse.Namespace,
    metrics: tuple[str, int] | None = None,
) -> fs_mount.MountConfig:
    return fs_mount.MountConfig(
        cluster=ClusterConfig(seeds=seeds, client=client, meta_deadline=args.meta_deadline),
        metrics=metrics,
        mountpoint=mountpoint,
        fuse_options=tuple(checks.fuse_options(args)),
        commit_within=args.commit_within,
    )


def _in_background(args: argparse.Namespace, argv: list[str], log: Path) -> None:
    options = [f"-o{opt}" for opt in checks.fuse_options(args)]
    timing = [f"--meta-deadline={args.meta_deadline}", f"--commit-within={args.commit_within}"]
    background.start([*checks.passthrough(args), *argv, "-f", *timing, *options], log)


def mount(args: argparse.Namespace) -> int:
    mountpoint = checks.mountpoint(args.mountpoint)
    seeds = checks.seeds(args.cluster)
    if args.key_file is not None:
        key, secret = read_key_file(args.key_file)
    else:
        key, secret = "", read_secret(args.secret_file)
    if not args.foreground:
        log = default_data_dir() / f"mount-{mountpoint.name or 'root'}.log"
        argv = ["mount", args.cluster, str(mountpoint)]
        for option, path in (("--key-file", args.key_file), ("--secret-file", args.secret_file),
                             ("--tls-ca", args.tls_ca), ("--tls-cert", args.tls_cert),
                             ("--tls-key", args.tls_key)):  # fmt: skip
            argv += [option, str(path.absolute())] if path is not None else []
        argv += ["--metrics", args.metrics] if args.metrics else []
        _in_background(args, argv, log)
        return 0
    metrics = split_address(args.metrics) if args.metrics else None
    config = _config(seeds, checks.client_config(secret, args, key), mountpoint, args, metrics)
    trio.run(_mount_and_report, config, args.ready_fd)
    return 0


def up(args: argparse.Namespace) -> int:
    keep_private()  # the data directory, its logs and its secret
    if os.geteuid() == 0:
        # Root mounts for the whole machine, as JuiceFS does: other users get in, and the
        # kernel holds each of them to the modes (default_permissions is always on).
        args.options = [*(args.options or []), "allow_other"]
    cluster = LocalCluster((args.data or default_data_dir()).absolute())
    cluster.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    cluster.data_dir.chmod(0o700)
    mountpoint = checks.mountpoint(args.mountpoint)
    names = cluster.node_names(args.nodes)
    secret = ensure_secret(cluster.secret_file)
    if not args.foreground:
        argv = ["up", str(mountpoint), "--data", str(cluster.data_dir), "--nodes", str(len(names))]
        _in_background(args, argv, cluster.log_file)
        print(
            f"ringfs is mounted on {mountpoint} (data in {cluster.data_dir}); "
            f"unmount with: fusermount3 -u {mountpoint}"
        )
        return 0
    with running_nodes(cluster, names, debug=args.debug) as nodes:
        seeds = checks.seeds(nodes.spec)
        # The mount is a client: it holds a key of its own, not the nodes' secret.
        client = trio.run(issued_key, seeds, ClientConfig(secret), LOCAL_KEY)
        config = _config(seeds, client, mountpoint, args)
        trio.run(_mount_and_report, config, args.ready_fd, nodes)
    return 0
