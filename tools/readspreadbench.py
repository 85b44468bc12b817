"""`ringfs bench --spread`: how a mount's block reads spread over the replicas, with one node
throttled and without.

It starts a cluster of its own (three local nodes, data in a temporary directory next to the
system's temp files), writes SIZE of files through a mount on MOUNTPOINT, and reads them all
back three times, each time through a new mount (so no cache holds a byte): with every node
running, with one node that is not the meta leader throttled (stopped 80 % of the time, as on
a host too busy to run it), and once more after the throttle ended. For each it prints the
blocks each node served (the `reads` of `node.stats`) and the read throughput. Everything it
started is stopped and removed at the end, also on errors.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import trio

from ringfs.fs.cluster import Cluster, connected
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools import timing
from ringfs.tools.local import LocalCluster, read_secret
from ringfs.tools.refillbench import mounted, own_cluster

T = TypeVar("T")

MiB = 1024 * 1024
FILE_SIZE = 64 * MiB
#: The throttle's cycle (seconds) and the part of it the node is stopped: short enough that a
#: read waits a fraction of a second, not long enough for a Raft election.
THROTTLE_PERIOD = 0.2
THROTTLE_STOPPED = 0.9


@contextlib.contextmanager
def throttled(
    pid: int, period: float = THROTTLE_PERIOD, stopped: float = THROTTLE_STOPPED
) -> Iterator[None]:
    """Keep process `pid` stopped for `stopped` of every `period` seconds (SIGSTOP, then
    SIGCONT), as a host too busy to run it would: it answers everything, slowly. It runs
    freely again when the block ends, also on errors."""
    done = threading.Event()

    def cycle() -> None:
        while not done.is_set():
            os.kill(pid, signal.SIGSTOP)
            done.wait(period * stopped)
            os.kill(pid, signal.SIGCONT)
            done.wait(period * (1 - stopped))

    thread = threading.Thread(target=cycle, name=f"throttle {pid}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


def run(mountpoint: Path, size: int) -> None:
    with own_cluster("ringfs-spread-") as (cluster, spec, nodes):
        _measure(cluster, spec, nodes, mountpoint, size)


def _measure(
    cluster: LocalCluster,
    spec: str,
    nodes: dict[str, subprocess.Popen[bytes]],
    mountpoint: Path,
    size: int,
) -> None:
    seeds = tuple(member.split("=")[1] for member in spec.split(","))
    secret = read_secret(cluster.secret_file)
    files = [f"f{i:04d}" for i in range(max(1, size // FILE_SIZE))]
    print(f"writing {len(files) * FILE_SIZE / MiB:.0f} MiB ...", file=sys.stderr)
    with mounted(cluster, spec, mountpoint):
        for name in files:
            timing.timed_write(mountpoint / name, FILE_SIZE)
    slow = trio.run(_ask, seeds, secret, not_the_leader)
    phases: list[tuple[str, contextlib.AbstractContextManager[None]]] = [
        ("no throttle", contextlib.nullcontext()),
        (f"{slow} throttled", throttled(nodes[slow].pid)),
        ("after the throttle", contextlib.nullcontext()),
    ]
    names = sorted(nodes)
    print(
        f"\nblocks served per node, reading {len(files) * FILE_SIZE / MiB:.0f} MiB "
        f"through a new mount each time; {slow} stopped {THROTTLE_STOPPED:.0%} of every "
        f"{THROTTLE_PERIOD:g} s while throttled"
    )
    print(f"{'':<20}" + "".join(f"{name:>8}" for name in names) + f"{'read MB/s':>12}")
    for label, throttle in phases:
        before = trio.run(_ask, seeds, secret, served)
        with mounted(cluster, spec, mountpoint), throttle:
            started = time.perf_counter()
            for name in files:
                _read(mountpoint / name)
            rate = len(files) * FILE_SIZE / (time.perf_counter() - started) / 1e6
        after = trio.run(_ask, seeds, secret, served)
        counts = "".join(f"{after[name] - before[name]:>8}" for name in names)
        print(f"{label:<20}{counts}{rate:>12.1f}", flush=True)


def _read(path: Path) -> None:
    with open(path, "rb", buffering=0) as source:
        while source.read(timing.IO_SIZE):
            pass


async def served(cluster: Cluster) -> dict[str, int]:
    """The blocks each node served since it started (0 for a node that does not answer)."""
    return {info.node_id: s["reads"] if s else 0 for info, s in await cluster.node_stats()}


async def not_the_leader(cluster: Cluster) -> str:
    """A node that does not lead the meta group: throttling the leader would stall every
    metadata call, which is another benchmark."""
    members = await cluster.meta_status()
    return next(info.node_id for info, s in members if s is not None and s["role"] != "leader")


async def _ask(
    seeds: tuple[str, ...], secret: bytes, question: Callable[[Cluster], Awaitable[T]]
) -> T:
    async with connected(seeds, ClientConfig(secret)) as cluster:
        return await question(cluster)
