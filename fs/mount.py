"""Mount a ringfs cluster: connect, mount, serve FUSE requests until unmounted, clean up.

`run(config)` is what `ringfs mount` runs. It returns when the filesystem is unmounted from
outside (`fusermount3 -u`); on SIGINT/SIGTERM it unmounts itself. Either way, what files still
open hold is stored (or logged as lost), the kernel connection is closed, orphaned inodes are
purged, and the changes the mount answered itself are sent with its directories given back
(`ringfs.fs.writebehind`) before it returns.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyfuse3
import trio

from ringfs.fs.blockcache import BlockCache
from ringfs.fs.budget import WriteBudget
from ringfs.fs.cluster import Cluster, ClusterConfig
from ringfs.fs.files import READAHEAD_CHUNKS, FileContext
from ringfs.fs.kernel_readahead import set_readahead
from ringfs.fs.later import Later
from ringfs.fs.metacache import MetaCache
from ringfs.fs.metadata import Metadata
from ringfs.fs.operations import CacheTimes, KernelCache, Operations
from ringfs.fs.telemetry import MountMetrics
from ringfs.fs.watcher import follow_changes
from ringfs.node.errors import Unavailable
from ringfs.node.meta.commands import INLINE_MAX, FsInfo, FsStats
from ringfs.node.metrics_http import serve_metrics

log = logging.getLogger(__name__)

# Concurrent FUSE requests: enough to keep several block fetches and metadata calls in flight.
MAX_FUSE_TASKS = 64
# Time allowed at unmount for storing what open files hold and purging unlinked inodes.
SHUTDOWN_GRACE = 10.0


@dataclass(frozen=True)
class MountConfig:
    cluster: ClusterConfig
    mountpoint: Path
    fuse_options: tuple[str, ...] = ()
    times: CacheTimes = field(default_factory=CacheTimes)
    # Chunk buffers (dirty or uploading) the whole mount may hold: bounds write-back memory.
    write_buffers: int = 16
    cache_bytes: int = 64 * 1024 * 1024
    # Files whose data the metadata keeps (see `INLINE_MAX`); 0: every block to the nodes.
    inline_max: int = INLINE_MAX
    # Seconds an uploaded chunk waits at most for its commit (`FileState._plan_commit`).
    commit_within: float = 30.0
    # Where to serve Prometheus metrics (host, port); None: nowhere.
    metrics: tuple[str, int] | None = None


def fuse_options(config: MountConfig) -> set[str]:
    """The options passed to the kernel: ours first, then the user's `-o` options."""
    options = set(pyfuse3.default_options)
    options |= {"fsname=ringfs", "subtype=ringfs"}
    options |= set(config.fuse_options)
    return options


class FuseKernelCache:
    """`KernelCache` through pyfuse3's invalidation notices, while the session is live (from
    `start`, after pyfuse3.init, to `stop`, before pyfuse3.close): before and after, there is
    no kernel connection to tell, and pyfuse3 must not be called."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._live = False
        self._in_threads = 0
        self._idle = trio.Event()

    def start(self) -> None:
        self._live = True

    async def stop(self) -> None:
        """No new notices; returns once those in worker threads are done."""
        self._live = False
        if self._in_threads:
            await self._idle.wait()

    def forget_attrs(self, ino: int) -> None:
        # Inline: for attributes the kernel only takes a spinlock, so this cannot wait for a
        # request we are serving (or the kernel may never have known the inode: ENOENT).
        if self._live:
            with contextlib.suppress(OSError):
                pyfuse3.invalidate_inode(ino, attr_only=True)

    def forget_data(self, ino: int) -> None:
        # In a worker thread: dropping pages waits for page locks that a read or write we
        # have yet to answer may hold.
        self._in_thread(pyfuse3.invalidate_inode, ino)

    def forget_entry(self, parent: int, name: bytes) -> None:
        # In a worker thread: the kernel takes the directory's lock, which a request we are
        # serving may hold.
        self._in_thread(pyfuse3.invalidate_entry, parent, name)

    def _in_thread(self, notice: Callable[..., None], *args: Any) -> None:
        if self._live:
            self._in_threads += 1
            self._nursery.start_soon(self._notify, notice, args, name="inval")

    async def _notify(self, notice: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            await trio.to_thread.run_sync(_quietly, notice, *args)
        finally:
            self._in_threads -= 1
            if not self._in_threads:
                self._idle.set()
                self._idle = trio.Event()


def _quietly(notice: Callable[..., None], *args: Any) -> None:
    """A notice about something the kernel may not hold (any more): ENOENT is no failure."""
    with contextlib.suppress(OSError):
        notice(*args)


async def create_operations(
    cluster: Cluster, config: MountConfig, nursery: trio.Nursery, kernel: KernelCache
) -> Operations:
    """The FUSE handlers for `cluster`, with caches and buffers sized by `config`, the task
    that keeps their cache of names and attributes current, and the one that sends the
    namespace changes they acknowledged.

    Waits for the filesystem to exist (a new cluster creates it once its meta group elected
    a leader); raises `Unavailable` if it does not within the metadata deadline.
    """
    info = await wait_for_filesystem(cluster)
    cache = MetaCache(cluster.client_id, trio.current_time)
    meta = Metadata(cluster, cache)
    files = FileContext(
        cluster=cluster,
        meta=meta,
        cache=BlockCache(cluster, config.cache_bytes, nursery, max_prefetch=READAHEAD_CHUNKS),
        budget=WriteBudget(config.write_buffers),
        chunk_size=info.chunk_size,
        nursery=nursery,
        commits=Later(nursery, config.commit_within),
        inline_max=config.inline_max,
    )
    operations = Operations(cluster, files, config.times, kernel)
    nursery.start_soon(meta.behind.run, name="write-behind")
    nursery.start_soon(cluster.follow_map, name="map")
    nursery.start_soon(
        follow_changes, cluster, cache, operations.changed_elsewhere, meta.behind.recall
    )
    return operations


async def wait_for_filesystem(cluster: Cluster) -> FsStats:
    """The filesystem's parameters, once its meta group created it; Unavailable if it does
    not within the metadata deadline."""
    with trio.move_on_after(cluster.config.meta_deadline):
        while True:
            info: FsStats = await cluster.meta_query(FsInfo())
            if info.chunk_size:
                return info
            await trio.sleep(0.1)
    raise Unavailable("metadata (the filesystem was not created in time)")


async def run(
    config: MountConfig, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Mount and serve until unmounted; reports readiness once the mount is in place.

    Raises `Unavailable` if the cluster cannot be reached, `AuthenticationError` for a wrong
    secret, RuntimeError if the kernel refuses the mount.
    """
    async with trio.open_nursery() as nursery:
        metrics = MountMetrics()
        client = dataclasses.replace(config.cluster.client, observe=metrics.call)
        cluster_config = dataclasses.replace(config.cluster, client=client)
        cluster = await Cluster.create(cluster_config, nursery=nursery)
        metrics.watch(cluster)
        if config.metrics is not None:
            host, port = config.metrics
            await nursery.start(serve_metrics, host, port, metrics.render)
        kernel = FuseKernelCache(nursery)
        operations = await create_operations(cluster, config, nursery, kernel)
        # Resolved before mounting: afterwards a look at the path is a request to us.
        mountpoint = config.mountpoint.resolve()
        pyfuse3.init(operations, str(mountpoint), fuse_options(config))
        kernel.start()
        nursery.start_soon(_widen_readahead, operations.initialized, mountpoint)
        log.info("mounted %s (chunk size %d)", config.mountpoint, operations.files.chunk_size)
        task_status.started()
        # The kernel connection ends either from outside (fusermount3 -u: already unmounted)
        # or from us (signal, error: we unmount).
        unmount = True
        signalled = trio.Event()
        try:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                nursery.start_soon(_stop_on_signal, signals, signalled, name="signals")
                await pyfuse3.main(max_tasks=MAX_FUSE_TASKS)
                unmount = signalled.is_set()
        finally:
            with trio.move_on_after(SHUTDOWN_GRACE) as scope:
                scope.shield = True
                await operations.flush_open_files()
                await operations.purge_orphans()
                await operations.files.meta.behind.release_all()
            if scope.cancelled_caught:
                log.error("unmount: gave up storing open files and purging after %ds",
                          SHUTDOWN_GRACE)  # fmt: skip
            with trio.CancelScope(shield=True):
                await kernel.stop()
            pyfuse3.close(unmount=unmount)
            log.info("unmounted %s", config.mountpoint)
            await cluster.aclose()
            nursery.cancel_scope.cancel()


async def _widen_readahead(initialized: trio.Event, mountpoint: Path) -> None:
    # The kernel's window is settled by INIT's answer, and only widened after it.
    await initialized.wait()
    set_readahead(mountpoint)


async def _stop_on_signal(signals: AsyncIterator[int], signalled: trio.Event) -> None:
    async for signum in signals:
        log.info("signal %d: unmounting", signum)
        signalled.set()
        pyfuse3.terminate()
        return
