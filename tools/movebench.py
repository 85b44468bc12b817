"""`ringfs bench --moves`: what a 4th node joining 3 moves, and draining it again, next to what
the change of placement asks for, and what the moves cost the mounts meanwhile.

It starts a cluster of its own (three local nodes, data in a temporary directory), writes SIZE
of files through a mount on MOUNTPOINT, then starts a 4th node that joins (`--join`), waits
until every block is where the new map places it, and drains that node again (`ringfs drain`)
until it has left. For each step it prints the bytes copied onto nodes that lacked them (read
off the nodes' stores), the bytes the change of placement asks for (each block's size for each
node its placement gained), the time taken, and a sequential write and read through the mount
while it ran, next to the same on the idle cluster. Everything it started is stopped and
removed at the end, also on errors.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import trio

from ringfs.fs.cluster import Cluster, connected
from ringfs.node.blocks.repair import PAGE, successor
from ringfs.node.cluster.map import MAP_FILE, ClusterMap
from ringfs.node.meta.commands import Blocks
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools.local import HOST, LocalCluster, free_ports, read_secret, start_node
from ringfs.tools.refillbench import fill, mounted, own_cluster, probe

MiB = 1024 * 1024
JOINING = "n4"

#: The block files of each node's store, with their sizes.
Holdings = dict[str, dict[str, int]]


def holdings(data_dir: Path, among: set[str] | None = None) -> Holdings:
    """The block files each node under `data_dir` holds now (of the ids `among`, if given),
    with their sizes."""
    return {
        node.name: {
            path.name: path.stat().st_size
            for path in node.glob("store/blocks/*/*/*")
            if among is None or path.name in among
        }
        for node in data_dir.glob("n*")
        if node.is_dir()
    }


def moved_bytes(before: Holdings, after: Holdings) -> int:
    """The bytes of blocks that existed before and are now on a node that lacked them."""
    existing = {block for held in before.values() for block in held}
    return sum(
        size
        for node, held in after.items()
        for block, size in held.items()
        if block in existing and block not in before.get(node, {})
    )


def placement_moves(before: Holdings, old: ClusterMap, new: ClusterMap) -> int:
    """The bytes the change of placement from `old` to `new` must copy, for the blocks held
    `before`: each block's size for each node its placement gained."""
    blocks = {block: size for held in before.values() for block, size in held.items()}
    return sum(
        size
        * len(
            {n.node_id for n in new.placement(bytes.fromhex(block))}
            - {n.node_id for n in old.placement(bytes.fromhex(block))}
        )
        for block, size in blocks.items()
    )


def run(mountpoint: Path, size: int, repair_rate: int) -> None:
    options = ("--repair-rate", str(repair_rate))
    with (
        own_cluster("ringfs-moves-", options) as (cluster, spec, nodes),
        mounted(cluster, spec, mountpoint),
    ):
        _measure(cluster, spec, options, nodes, mountpoint, size, repair_rate)


def _measure(
    cluster: LocalCluster,
    spec: str,
    options: tuple[str, ...],
    nodes: dict[str, subprocess.Popen[bytes]],
    mountpoint: Path,
    size: int,
    repair_rate: int,
) -> None:
    fill(mountpoint, size)
    seeds = tuple(member.split("=")[1] for member in spec.split(","))
    secret = read_secret(cluster.secret_file)
    idle = [probe(mountpoint / "probe")]
    rows = []

    def step(label: str, change: Any) -> None:
        # The blocks files reference: not those of the probes, deleted and not collected yet.
        files = trio.run(_referenced, seeds, secret)
        before, old = holdings(cluster.data_dir, files), _agreed(cluster)
        started = time.monotonic()
        change()
        during = []
        while not trio.run(_settled, seeds, secret, old.epoch):
            during.append(probe(mountpoint / "probe"))
        seconds = time.monotonic() - started
        moved = moved_bytes(before, holdings(cluster.data_dir))
        ideal = placement_moves(before, old, _agreed(cluster))
        rows.append((label, moved, ideal, seconds, during))

    def join() -> None:
        [port] = free_ports(1)
        entry = f"{JOINING}={HOST}:{port}"
        joining = (*options, "--join", ",".join(seeds))
        nodes[JOINING] = start_node(
            cluster, JOINING, entry, joining, log=cluster.log_file, wait=True
        )

    def drain() -> None:
        trio.run(_ask, seeds, secret, "map.change", ["drain", [JOINING]])

    step(f"3 -> 4 nodes ({JOINING} joins)", join)
    step(f"4 -> 3 nodes ({JOINING} drained)", drain)
    idle.append(probe(mountpoint / "probe"))

    print(
        f"\n{size / MiB:.0f} MiB of files (x3), --repair-rate {repair_rate / MiB:.0f}M\n"
        f"{'step':<28}{'moved MiB':>11}{'ideal MiB':>11}{'ratio':>7}{'seconds':>9}"
        f"{'write MB/s':>12}{'read MB/s':>11}"
    )
    for label, moved, ideal, seconds, during in [*rows, ("idle", 0, 0, 0.0, idle)]:
        write = statistics.median(p[0] for p in during) if during else float("nan")
        read = statistics.median(p[1] for p in during) if during else float("nan")
        ratio = f"{moved / ideal:.2f}" if ideal else "-"
        print(
            f"{label:<28}{moved / MiB:>11.0f}{ideal / MiB:>11.0f}{ratio:>7}{seconds:>9.1f}"
            f"{write:>12.1f}{read:>11.1f}"
        )


def _agreed(cluster: LocalCluster) -> ClusterMap:
    """The map n1 (never the node that comes and goes) goes by."""
    return ClusterMap.from_wire(json.loads((cluster.data_dir / "n1" / MAP_FILE).read_text()))


async def _ask(seeds: tuple[str, ...], secret: bytes, method: str, params: list[Any]) -> Any:
    async with connected(seeds, ClientConfig(secret)) as cluster:
        return await cluster.pool.call(seeds[0], method, params)


async def _referenced(seeds: tuple[str, ...], secret: bytes) -> set[str]:
    """The ids (hex) of the blocks some file references now."""
    ids: set[str] = set()
    first: bytes | None = bytes(16)
    async with connected(seeds, ClientConfig(secret)) as cluster:
        while first is not None:
            refs = await cluster.meta_query(Blocks(first, b"\xff" * 16, PAGE))
            ids.update(ref.block_id.hex() for ref in refs)
            first = successor(refs[-1].block_id) if len(refs) == PAGE else None
    return ids


async def _settled(seeds: tuple[str, ...], secret: bytes, since: int) -> bool:
    """Whether the map moved past epoch `since` to a map with no node joining or draining, and
    every node holding blocks finished a clean repair pass that started under it."""
    async with connected(seeds, ClientConfig(secret)) as cluster:
        cmap = await cluster.refresh_map()
        if cmap.epoch <= since or any(n.state in ("joining", "draining") for n in cmap.nodes):
            return False
        await trio.sleep(1.0)
        return await _whole(cluster, cmap)


async def _whole(cluster: Cluster, cmap: ClusterMap) -> bool:
    """Every node holding blocks goes by `cmap` and has a clean pass that started since."""
    for node in cmap.holders():
        info = await cluster.pool.call(node.address, "node.info", [])
        if info["epoch"] < cmap.epoch:
            return False
    wanted = {n.node_id: s["wanted"] for n, s in await cluster.repair_start() if s is not None}
    while True:
        answers = await cluster.repair_status()
        status = {n.node_id: s for n, s in answers if s is not None}
        if len(status) < len(answers):
            return False
        if all(s["clean"] >= wanted.get(n, 0) for n, s in status.items()):
            return True
        last = [s["last"] for s in status.values() if s["last"] is not None]
        if any(record["missing"] > record["repaired"] for record in last):
            return False  # copies still on their way: measure the mount meanwhile
        await trio.sleep(0.5)
