"""`ringfs bench --parts`, third part: a metadata call's round trip, alone: one node and a
client in this process, on loopback.

Every operation a mount cannot answer itself is such a call to the meta-group leader, and a
`close` is one too. With the node and the client on one trio loop, the time of a call is the
CPU both ends spend on it (encoding, the RPC layer, the scheduler, the handler), with no
other process in the way. The node is a one-member group: a command commits at its own log
write, without a follower's round.

Numbers, not verdicts: `docs/performance.md` reads them.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ringfs.fs.cluster import Cluster, connected
from ringfs.node import daemon
from ringfs.node.cluster.map import parse_members
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.meta.commands import ROOT_INO, GetAttr, Setattr
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools.local import free_ports

CALLS = 3000
#: Calls before those timed: the connection, the leader's lease, the first pages.
WARMUP = 300
SECRET = b"ringfs bench --parts"
#: Seconds the node has to become its group's leader.
LEAD_WAIT = 30


async def _timed(call: Callable[[int], Awaitable[object]], count: int) -> list[float]:
    samples = []
    for n in range(count):
        start = time.perf_counter()
        await call(n)
        samples.append(time.perf_counter() - start)
    return samples


async def _until_led(cluster: Cluster) -> None:
    """Wait for the node to lead its group (it elects itself after a few ticks); raises
    TooSlowError if it does not within `LEAD_WAIT` seconds."""
    with trio.fail_after(LEAD_WAIT):
        while True:
            try:
                await cluster.meta_query(GetAttr(ROOT_INO))
                return
            except (NodeError, Unavailable):
                await trio.sleep(0.05)


async def calls(directory: Path, count: int) -> dict[str, list[float]]:
    """Seconds of each of `count` queries and commands, a node's data in `directory`."""
    [port] = free_ports(1)
    config = daemon.NodeConfig(
        node_id="n1",
        data_dir=directory / "n1",
        secret=SECRET,
        port=port,
        members=parse_members(f"n1=127.0.0.1:{port}"),
        replicas=1,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run, config)
        async with connected((f"127.0.0.1:{port}",), ClientConfig(SECRET)) as cluster:
            await _until_led(cluster)

            async def query(_: int) -> None:
                await cluster.meta_query(GetAttr(ROOT_INO))

            async def command(n: int) -> None:
                await cluster.meta_apply(Setattr(ROOT_INO, None, None, None, None, n, None, 0))

            await _timed(query, WARMUP)
            times = {
                "query (GetAttr)": await _timed(query, count),
                "command (Setattr of a time)": await _timed(command, count),
            }
        nursery.cancel_scope.cancel()
    return times


def run(directory: Path) -> None:
    with tempfile.TemporaryDirectory(dir=directory, prefix="ringfs-rpc-") as scratch:
        times = trio.run(calls, Path(scratch), CALLS)
    print(f"a metadata call to a one-node group in this process, {CALLS} each:")
    for name, samples in times.items():
        print(f"  {name:<34} median {statistics.median(samples) * 1e6:6.0f} µs")
