"""In-process clusters: real nodes as trio tasks on loopback ports, no kernel involved."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio

from ringfs.fs.cluster import Cluster, ClusterConfig
from ringfs.node import daemon
from ringfs.node.blocks.repair import RepairConfig
from ringfs.node.blocks.scrub import ScrubConfig
from ringfs.node.cluster.map import ClusterMap, parse_members
from ringfs.node.errors import Departed
from ringfs.node.rpc.client import ClientConfig
from tests.conftest import free_ports

SECRET = b"in-process-test-secret"


async def wait_until(check: Callable[[], Awaitable[bool]], seconds: float = 20) -> None:
    """Poll `check` until it holds: for state that no event signals (files, the metadata,
    connections closed by the other end)."""
    with trio.fail_after(seconds):
        while not await check():  # noqa: ASYNC110
            await trio.sleep(0.05)


@dataclass
class LocalNodes:
    """Nodes running in this process; each can be stopped (as if crashed) and started again."""

    root: Path
    nursery: trio.Nursery
    configs: dict[str, daemon.NodeConfig] = field(default_factory=dict)
    scopes: dict[str, trio.CancelScope] = field(default_factory=dict)
    stopped: dict[str, trio.Event] = field(default_factory=dict)
    departed: set[str] = field(default_factory=set)

    @property
    def seeds(self) -> tuple[str, ...]:
        return tuple(f"{c.host}:{c.port}" for c in self.configs.values())

    @property
    def map(self) -> ClusterMap:
        first = next(iter(self.configs.values()))
        assert first.members is not None
        return ClusterMap(1, first.members)

    async def start(self, name: str) -> None:
        await self.nursery.start(self._run, self.configs[name])

    async def _run(
        self,
        config: daemon.NodeConfig,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        stopped = self.stopped[config.node_id] = trio.Event()
        try:
            with trio.CancelScope() as scope:
                self.scopes[config.node_id] = scope
                async with trio.open_nursery() as inner:
                    await inner.start(daemon.run, config)
                    task_status.started()
        except* Departed:  # it left the cluster: it stops, as the process would
            self.departed.add(config.node_id)
        finally:
            stopped.set()

    async def join(self, name: str, **overrides: object) -> None:
        """Start a new node `name` with an empty data directory that joins through the
        others, configured as the first node but for `overrides`."""
        [port] = free_ports(1)
        first = next(iter(self.configs.values()))
        self.configs[name] = dataclasses.replace(
            first,
            node_id=name,
            data_dir=self.root / name,
            port=port,
            members=None,
            join=self.seeds,
            **overrides,  # type: ignore[arg-type]
        )
        await self.start(name)

    async def stop(self, name: str) -> None:
        """Cancel the node's tasks, as when the process dies: its connections drop, and its
        data directory is free to start it again once this returns."""
        self.scopes.pop(name).cancel()
        await self.stopped[name].wait()

    async def client(self, **overrides: float) -> Cluster:
        config = ClusterConfig(self.seeds, ClientConfig(SECRET, **overrides))  # type: ignore[arg-type]
        return await Cluster.create(config, nursery=self.nursery)


async def start_nodes(
    root: Path,
    nursery: trio.Nursery,
    count: int = 3,
    chunk_size: int = daemon.DEFAULT_CHUNK_SIZE,
    snapshot_threshold: int = daemon.NodeConfig.snapshot_threshold,
    gc_grace: float = daemon.NodeConfig.gc_grace,
    scrub: ScrubConfig = daemon.NodeConfig.scrub,
    repair: RepairConfig = daemon.NodeConfig.repair,
    mount_expiry: float = daemon.NodeConfig.mount_expiry,
    out_after: float = daemon.NodeConfig.out_after,
) -> LocalNodes:
    ports = free_ports(count)
    members = parse_members(",".join(f"n{i + 1}=127.0.0.1:{p}" for i, p in enumerate(ports)))
    nodes = LocalNodes(root, nursery)
    for member in members:
        nodes.configs[member.node_id] = daemon.NodeConfig(
            node_id=member.node_id,
            data_dir=root / member.node_id,
            secret=SECRET,
            port=member.port,
            members=members,
            chunk_size=chunk_size,
            snapshot_threshold=snapshot_threshold,
            gc_grace=gc_grace,
            scrub=scrub,
            repair=repair,
            mount_expiry=mount_expiry,
            out_after=out_after,
        )
        await nodes.start(member.node_id)
    return nodes


@pytest.fixture
async def nodes(tmp_path: Path, nursery: trio.Nursery) -> LocalNodes:
    return await start_nodes(tmp_path, nursery)


#: The chunk size of `small_chunks`: files of a few chunks stay small.
SMALL_CHUNK = 64 * 1024


@pytest.fixture
async def small_chunks(tmp_path: Path, nursery: trio.Nursery) -> LocalNodes:
    return await start_nodes(tmp_path, nursery, chunk_size=SMALL_CHUNK)
