"""`ringfs bench --refill`: how fast a wiped node gets its copies back, and what that costs.

It starts a cluster of its own (three local nodes, data in a temporary directory next to the
system's temp files, mounted on MOUNTPOINT), writes SIZE of files, and measures a sequential
write (with fsync) and a cold read of 256 MiB. Then it stops n2, removes its block store and
starts it again, measures the same write and read while n2 is refilled, and waits until the
refill is done (as `ringfs repair --wait`). It prints the refill rate and the foreground
throughput with and without the refill beside it (medians of the probes: one before the wipe
and one after the refill, and as many as fit in the refill). Everything it started is stopped
and removed at the end, also on errors.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import trio

from ringfs.fs.cluster import Cluster, ClusterConfig
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools import timing
from ringfs.tools.args import UserError
from ringfs.tools.local import (
    LocalCluster,
    ensure_secret,
    node_spec,
    read_secret,
    spec_names,
    start_node,
    stop_nodes,
)

MiB = 1024 * 1024
PROBE = 256 * MiB
FILE_SIZE = 64 * MiB
WIPED = "n2"


def run(mountpoint: Path, size: int, repair_rate: int) -> None:
    options = ("--repair-rate", str(repair_rate))
    with (
        own_cluster("ringfs-refill-", options) as (cluster, spec, nodes),
        mounted(cluster, spec, mountpoint),
    ):
        _measure(cluster, spec, options, nodes, mountpoint, size, repair_rate)


@contextlib.contextmanager
def own_cluster(
    prefix: str, options: tuple[str, ...] = ()
) -> Iterator[tuple[LocalCluster, str, dict[str, subprocess.Popen[bytes]]]]:
    """Three local nodes started with `options`, their data in a new temporary directory named
    after `prefix`: the cluster, its `--cluster` spec and the node processes by name (the
    caller may stop one and put another in its place). All stopped and removed at the end,
    also on errors."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        cluster = LocalCluster(Path(tmp))
        ensure_secret(cluster.secret_file)
        spec = node_spec(["n1", "n2", "n3"])
        nodes: dict[str, subprocess.Popen[bytes]] = {}
        try:
            for name in spec_names(spec):
                nodes[name] = _start(cluster, name, spec, options)
            yield cluster, spec, nodes
        finally:
            stop_nodes(list(nodes.values()))


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
    secret = read_secret(cluster.secret_file)
    idle = [probe(mountpoint / "probe")]

    stop_nodes([nodes[WIPED]])
    shutil.rmtree(cluster.data_dir / WIPED / "store")
    nodes[WIPED] = _start(cluster, WIPED, spec, options)
    started = time.monotonic()
    during = []
    while (refilled := trio.run(_refilled, spec, secret)) is None:
        during.append(probe(mountpoint / "probe"))
    seconds = time.monotonic() - started
    idle.append(probe(mountpoint / "probe"))

    print(
        f"\nrefill of {WIPED}: {refilled / MiB:.0f} MiB in {seconds:.1f} s: "
        f"{refilled / MiB / seconds:.1f} MiB/s (--repair-rate {repair_rate / MiB:.0f}M)"
    )
    print(f"\n{'medians':<24}{'seq write MB/s':>16}{'seq read MB/s':>16}")
    for label, probes in ((f"idle ({len(idle)} runs)", idle), (f"refill ({len(during)})", during)):
        if probes:
            write = statistics.median(p[0] for p in probes)
            read = statistics.median(p[1] for p in probes)
            print(f"{label:<24}{write:>16.1f}{read:>16.1f}")


def _start(
    cluster: LocalCluster, name: str, spec: str, options: tuple[str, ...]
) -> subprocess.Popen[bytes]:
    return start_node(cluster, name, spec, options, log=cluster.log_file, wait=True)


def fill(mountpoint: Path, size: int) -> None:
    """Write `size` bytes through the mount in `FILE_SIZE` files, and have the nodes' disks
    take them in (their writeback must not weigh on the figures that follow)."""
    print(f"writing {size / MiB:.0f} MiB in {FILE_SIZE // MiB} MiB files ...", file=sys.stderr)
    for i in range(max(1, size // FILE_SIZE)):
        timing.timed_write(mountpoint / f"fill{i:04d}", FILE_SIZE)
    os.sync()


def probe(path: Path) -> tuple[float, float]:
    """A sequential write (with fsync) and a cold read of `PROBE` bytes, in MB/s."""
    write = timing.timed_write(path, PROBE)
    read = timing.timed_read(path)
    path.unlink()
    return write, read


async def _refilled(spec: str, secret: bytes) -> int | None:
    """The bytes the wiped node stored again once it finished a clean repair pass; None
    before."""
    seeds = tuple(member.split("=")[1] for member in spec.split(","))
    config = ClusterConfig(seeds=seeds, client=ClientConfig(secret=secret))
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.create(config, nursery=nursery)
        try:
            stats = {info.node_id: s for info, s in await cluster.repair_status()}
        finally:
            await cluster.aclose()
            nursery.cancel_scope.cancel()
    repair = stats[WIPED]
    if repair is None or repair["clean"] < 1:
        return None
    return int(repair["repaired_bytes"])


@contextlib.contextmanager
def mounted(cluster: LocalCluster, spec: str, mountpoint: Path) -> Iterator[None]:
    """The cluster of `spec` mounted on `mountpoint` (an empty directory) for the block, its
    messages going to mount.log in the data directory; unmounted at the end, also on errors."""
    if os.path.ismount(mountpoint) or any(mountpoint.iterdir()):
        raise UserError(f"{mountpoint} must be an empty directory that is not a mount point")
    argv = [sys.executable, "-m", "ringfs.tools", "mount", spec, str(mountpoint),
            "--secret-file", str(cluster.secret_file), "-f"]  # fmt: skip
    with open(cluster.data_dir / "mount.log", "ab") as log:
        process = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(mountpoint):
            if process.poll() is not None or time.monotonic() > deadline:
                raise UserError(f"the mount did not come up: see {cluster.data_dir}/mount.log")
            time.sleep(0.05)
        yield
    finally:
        subprocess.run(["fusermount3", "-u", str(mountpoint)], check=False, capture_output=True)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
