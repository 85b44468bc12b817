"""`ringfs latency`: where the time of one metadata operation goes, layer by layer.

Each line times one operation many times, one after the other, and prints its median and
mean. Operations through the mount include everything (the kernel, pyfuse3, the mount, the
network hops, the meta-group leader, Raft); the same calls made straight to the cluster from
this process leave out the kernel and the mount, and the differences between lines are the
cost of each layer. Numbers, not verdicts: `docs/performance.md` reads them.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from ringfs.fs.cluster import Cluster, connected
from ringfs.node.blocks.store import BLOCK_ID_SIZE
from ringfs.node.checksum import checksum
from ringfs.node.meta.commands import ROOT_INO, GetAttr, Setattr
from ringfs.node.rpc.client import ClientConfig
from ringfs.tools.args import UserError, cluster_access

SMALL_FILE = 4096


def _report(label: str, samples: list[float]) -> None:
    median, mean = statistics.median(samples) * 1e6, statistics.fmean(samples) * 1e6
    print(f"{label:<46} median {median:8.0f} us   mean {mean:8.0f} us", flush=True)


def _timed(label: str, operation: Callable[[int], object], rounds: int) -> None:
    samples = []
    for i in range(rounds):
        start = time.perf_counter()
        operation(i)
        samples.append(time.perf_counter() - start)
    _report(label, samples)


async def _timed_async(
    label: str, operation: Callable[[int], Awaitable[object]], rounds: int
) -> None:
    samples = []
    for i in range(rounds):
        start = time.perf_counter()
        await operation(i)
        samples.append(time.perf_counter() - start)
    _report(label, samples)


def _refused(path: Path) -> Callable[[int], object]:
    """getxattr of a name outside the Linux namespaces: the mount answers it alone."""

    def call(_: int) -> None:
        with contextlib.suppress(OSError):
            os.getxattr(path, "ringfs.latency")

    return call


def _missing(work: Path) -> Callable[[int], object]:
    """lstat of a name never seen: the kernel has no entry and asks the mount to look it up.
    The mount made the directory, so it answers alone (`MetaCache.known_missing`)."""

    def call(i: int) -> None:
        try:
            os.lstat(work / f"missing{i}")
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                raise

    return call


def _mount_lines(mountpoint: Path, rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="ringfs-latency-", dir=mountpoint))
    try:
        data = os.urandom(SMALL_FILE)
        _timed("mount: getxattr answered by the mount alone", _refused(work), rounds)
        _timed("mount: lstat of a missing name (lookup)", _missing(work), rounds)

        def create(i: int) -> None:
            fd = os.open(work / f"f{i}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, data)
            os.close(fd)

        _timed("mount: create + write 4 KiB + close", create, rounds)
        _timed("mount: rename", lambda i: os.rename(work / f"f{i}", work / f"g{i}"), rounds)
        _timed("mount: unlink", lambda i: os.unlink(work / f"g{i}"), rounds)
    finally:
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()


async def _cluster_lines(seeds: tuple[str, ...], client: ClientConfig, rounds: int) -> None:
    async with connected(seeds, client) as cluster:
        # Blocks first: the last one's third copy lands while the metadata lines run, not
        # while the connections close.
        block = memoryview(os.urandom(SMALL_FILE))
        await _timed_async(
            "direct: 4 KiB block to a write quorum", lambda _: _put(cluster, block), rounds
        )
        await _timed_async("direct: metadata query (GetAttr)", lambda _: _getattr(cluster), rounds)
        await _timed_async(
            "direct: metadata command (Setattr)", lambda i: _touch(cluster, i), rounds
        )


async def _getattr(cluster: Cluster) -> None:
    await cluster.meta_query(GetAttr(ROOT_INO))


async def _touch(cluster: Cluster, i: int) -> None:
    await cluster.meta_apply(Setattr(ROOT_INO, None, None, None, None, i, None, 0))


async def _put(cluster: Cluster, data: memoryview) -> None:
    await cluster.put_block(os.urandom(BLOCK_ID_SIZE), data, checksum(data))


def main(args: argparse.Namespace) -> int:
    """`ringfs latency` with parsed arguments."""
    if not args.mountpoint.is_dir():
        raise UserError(f"{args.mountpoint} is not a directory")
    seeds, client = cluster_access(args)
    _mount_lines(args.mountpoint, args.rounds)
    trio.run(_cluster_lines, seeds, client, args.rounds)
    return 0
