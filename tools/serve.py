"""`ringfs node`: run one storage node in the foreground until SIGTERM or SIGINT.

Imports nothing from the FUSE client: a storage node never loads pyfuse3.
"""

from __future__ import annotations

import argparse
import signal

import trio

from ringfs.node import daemon
from ringfs.node.blocks.repair import RepairConfig
from ringfs.node.blocks.scrub import ScrubConfig
from ringfs.node.cluster.map import parse_members
from ringfs.node.rpc.client import split_address
from ringfs.tools import args as checks
from ringfs.tools.args import UserError, seeds
from ringfs.tools.heap import keep_freed_buffers
from ringfs.tools.local import keep_private, read_secret


def node(args: argparse.Namespace) -> int:
    keep_private()
    keep_freed_buffers()
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
        snapshot_threshold=args.snapshot_every,
        reserve=args.reserve,
        gc_grace=args.gc_grace,
        mount_expiry=args.mount_expiry,
        repair=RepairConfig(
            interval=args.repair_interval,
            rate=args.repair_rate,
            transfers=args.repair_transfers,
            orphan_age=args.orphan_age,
        ),
        scrub=ScrubConfig(period=args.scrub_period, rate=args.scrub_rate),
        join=seeds(args.join) if args.join else (),
        weight=args.weight,
        zone=args.zone,
        out_after=args.out_after,
        tls=checks.tls(args),
        metrics=split_address(args.metrics) if args.metrics else None,
    )
    if args.join and args.cluster:
        raise UserError("give --cluster (to found a cluster) or --join (to join one), not both")
    trio.run(_serve, config)
    return 0


async def _serve(config: daemon.NodeConfig) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(daemon.run, config)
            # The line supervisors and tests wait for: the node is serving.
            print(f"ready {config.node_id} {config.host}:{port}", flush=True)
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break
