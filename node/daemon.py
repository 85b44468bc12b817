"""A storage node process: its data directory, its cluster map, its services.

`run(config)` is what `ringfs node` runs. The data directory holds the block store, the
node's copy of the cluster map and, on the members of the meta group (three nodes, first those
the ring picks for the key `meta`), a replica of the metadata with its Raft log.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trio

from ringfs.node.agreement import MapKeeper, join
from ringfs.node.blocks.repair import RepairConfig
from ringfs.node.blocks.scrub import ScrubConfig
from ringfs.node.blocks.space import Reserve
from ringfs.node.blocks.store import BlockStore
from ringfs.node.cluster.keys import key_lookup
from ringfs.node.cluster.map import MAP_FILE, ClusterMap, MapView, NodeInfo
from ringfs.node.collector import Collector
from ringfs.node.errors import ConfigError
from ringfs.node.lifecycle import Lifecycle
from ringfs.node.meta.replica import MetaGroup, ReplicatedMeta
from ringfs.node.metrics_http import serve_metrics
from ringfs.node.raft.transport import RpcTransport
from ringfs.node.register import NodeRegister, RegisterStore
from ringfs.node.repairer import Repairer
from ringfs.node.rpc.client import ClientConfig, NodePool
from ringfs.node.rpc.protocol import DEFAULT_LIMITS, ClusterIdentity
from ringfs.node.rpc.server import RpcServer, ServerConfig
from ringfs.node.rpc.tls import TlsFiles
from ringfs.node.scrubber import Scrubber
from ringfs.node.seat import MetaSeat
from ringfs.node.service import NodeService

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 4 * 1024 * 1024
# A chunk travels as one block in one message, so the message limit bounds it.
MIN_CHUNK_SIZE = 4096
MAX_CHUNK_SIZE = DEFAULT_LIMITS.max_bin_len
LOCK_FILE = "lock"
SCRUB_FILE = "scrub.json"


@dataclass(frozen=True)
class NodeConfig:
    node_id: str
    data_dir: Path
    secret: bytes
    host: str = "127.0.0.1"
    port: int = 0
    # All members, given on the first start; later starts may omit them (the stored map is used).
    members: tuple[NodeInfo, ...] | None = None
    replicas: int = 3
    # Used only when this node creates the filesystem (the chunk size is fixed at creation).
    chunk_size: int = DEFAULT_CHUNK_SIZE
    # Applied metadata entries between Raft snapshots (log compaction); None: by the size of
    # the log against the state (see `ReplicatedMeta`).
    snapshot_threshold: int | None = None
    # Free space block writes leave for the Raft log and the metadata database.
    reserve: Reserve = Reserve()
    # Seconds a block stays listed as garbage before the collector deletes it: readers that
    # opened a file before its contents were replaced may still be reading the old blocks.
    gc_grace: float = 60.0
    repair: RepairConfig = RepairConfig()
    # Seconds a mount may go without polling the change feed before its session ends and the
    # files it unlinked while open are purged (it is taken to be gone).
    mount_expiry: float = 600.0
    scrub: ScrubConfig = ScrubConfig()
    # TLS for every connection, both ways (see `ringfs.node.rpc.tls`); None: plain TCP.
    tls: TlsFiles | None = None
    # Where to serve Prometheus metrics (host, port); None: nowhere.
    metrics: tuple[str, int] | None = None
    # Addresses of nodes of the cluster this node joins, on its first start (instead of
    # `members`), with the weight and zone it joins with.
    join: tuple[str, ...] = ()
    weight: float = 1.0
    zone: str = ""
    # Seconds a node may not answer the meta-group leader before it is marked out.
    out_after: float = 600.0


def resolve_map(config: NodeConfig) -> ClusterMap:
    """The cluster map this node starts with: stored, created, or stored with new addresses.

    Raises `ConfigError` when the given members contradict the stored map or omit this node.
    """
    path = config.data_dir / MAP_FILE
    stored = ClusterMap.load(path) if path.exists() else None
    members = config.members
    if members is None:
        if stored is None:
            raise ConfigError(
                f"{config.data_dir} holds no cluster map: give the members "
                "with --cluster on the first start"
            )
        cmap = stored
    elif stored is None:
        cmap = ClusterMap(epoch=1, nodes=members, replicas=config.replicas)
    elif not stored.cluster_id and {n.node_id for n in stored.nodes} != {
        n.node_id for n in members
    }:
        raise ConfigError(
            "--cluster names other nodes than the map stored in "
            f"{path} ({', '.join(sorted(n.node_id for n in stored.nodes))})"
        )
    elif (moved := stored.readdressed(members)) != stored:
        # Of the members the map has (others may have joined or left since: the cluster's
        # map tells); the epoch moves when the cluster agrees on them (`ringfs.node.agreement`).
        cmap = moved
        log.info("node addresses changed: proposing them to the cluster")
    else:
        cmap = stored
    if config.node_id not in {n.node_id for n in cmap.nodes}:
        raise ConfigError(f"node {config.node_id!r} is not a member of the cluster map")
    if cmap is not stored:
        cmap.save(path)
    return cmap


async def run(
    config: NodeConfig, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Serve until cancelled; reports the bound port through `task_status`.

    Raises `ConfigError` for an unusable configuration and OSError when the address cannot be
    bound.
    """
    if config.snapshot_threshold is not None and config.snapshot_threshold < 1:
        raise ConfigError("--snapshot-every must be at least 1")
    if not 0 < config.gc_grace < math.inf:
        raise ConfigError("--gc-grace must be a positive number of seconds")
    if not (0 < config.repair.interval < math.inf and 0 < config.repair.rate < math.inf):
        raise ConfigError("--repair-interval and --repair-rate must be positive")
    if not 0 < config.out_after < math.inf:
        raise ConfigError("--out-after must be a positive number of seconds")
    if config.join and config.port == 0:
        raise ConfigError("--join needs the address others reach this node at: --listen HOST:PORT")
    if not 0 < config.mount_expiry < math.inf:
        raise ConfigError("--mount-expiry must be a positive number of seconds")
    if not 0 < config.repair.orphan_age < math.inf:
        raise ConfigError("--orphan-age must be a positive number of seconds")
    if config.repair.transfers < 1:
        raise ConfigError("--repair-transfers must be at least 1")
    if not (0 < config.scrub.period < math.inf and 0 < config.scrub.rate < math.inf):
        raise ConfigError("--scrub-period and --scrub-rate must be positive")
    if not MIN_CHUNK_SIZE <= config.chunk_size <= MAX_CHUNK_SIZE:
        raise ConfigError(f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Private, whatever made it: it holds the blocks of every file, whatever their modes.
    config.data_dir.chmod(0o700)
    with _exclusive(config.data_dir):
        await _serve(config, task_status)


@contextlib.contextmanager
def _exclusive(data_dir: Path) -> Iterator[None]:
    """Hold the data directory's lock: two nodes on one directory would corrupt it."""
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"{data_dir} is in use by another node") from None
        yield
    finally:
        os.close(fd)


async def _join(config: NodeConfig, peers: NodePool) -> None:
    """On the first start with `--join`: be added to the cluster's map, and keep it."""
    if config.join and not (config.data_dir / MAP_FILE).exists():
        joining = NodeInfo(config.node_id, config.host, config.port, config.weight, config.zone)
        cmap = await join(peers, config.join, joining)
        await trio.to_thread.run_sync(cmap.save, config.data_dir / MAP_FILE)
        log.info(
            "node %s joined cluster %s (map epoch %d)", config.node_id, cmap.cluster_id, cmap.epoch
        )


async def _serve(config: NodeConfig, task_status: trio.TaskStatus[int]) -> None:
    identity = ClusterIdentity()
    async with trio.open_nursery() as nursery:
        tls = config.tls
        client = ClientConfig(
            config.secret,
            ssl_context=tls.client_context() if tls else None,
            identity=identity,
        )
        peers = NodePool(client, nursery)
        await _join(config, peers)
        cmap = resolve_map(config)
        identity.cluster_id = cmap.cluster_id
        view = MapView(cmap)
        store = BlockStore(config.data_dir / "store", config.reserve)
        server_config = ServerConfig(
            secret=config.secret,
            node_id=config.node_id,
            host=config.host,
            port=config.port,
            ssl_context=tls.server_context() if tls else None,
            identity=identity,
            keys=key_lookup(config.secret, lambda name: view.current.key_salt(name)),
        )
        transport = RpcTransport(view, peers, nursery)
        seat = MetaSeat(
            config.node_id,
            config.data_dir,
            view,
            lambda: ReplicatedMeta(
                config.node_id,
                MetaGroup(
                    founders=view.current.meta_founders(),
                    wanted=lambda: view.current.meta_ids(),
                    members=lambda: view.current.acceptors(),
                ),
                config.data_dir,
                transport,
                config.chunk_size,
                config.snapshot_threshold,
            ),
            lambda meta: Collector(meta, peers, view, config.gc_grace, config.mount_expiry),
        )
        await nursery.start(seat.run)
        register = NodeRegister(config.node_id, RegisterStore(config.data_dir), peers, view)
        keeper = MapKeeper(
            register, view, identity, config.data_dir / MAP_FILE, lambda: _map_changed()
        )
        repairer = Repairer(config.node_id, store, peers, view, config.repair, keeper.offered)
        scrubber = Scrubber(store, repairer, config.data_dir / SCRUB_FILE, config.scrub)
        service = NodeService(
            config.node_id,
            view,
            store,
            repairer,
            scrubber,
            register,
            keeper,
            seat,
        )
        server = RpcServer(
            server_config,
            service.handle,
            service.notified,
            service.intake,
            service.metrics.request,
            service.handle_client,
        )

        def _map_changed() -> None:
            repairer.ask()  # the new map may place blocks elsewhere: repair moves them there
            server.recheck_keys()  # and may have revoked client keys

        port = await nursery.start(server.serve)
        if config.metrics is not None:
            host, metrics_port = config.metrics
            await nursery.start(serve_metrics, host, metrics_port, service.metrics.render)
        nursery.start_soon(_count, store, name="count blocks")
        nursery.start_soon(repairer.run, name="repair")
        nursery.start_soon(scrubber.run, name="scrub")
        # Serving already: the other nodes' agreement needs this node's acceptor.
        nursery.start_soon(keeper.run, config.members, name="cluster map")
        lifecycle = Lifecycle(
            config.node_id,
            keeper,
            repairer,
            store,
            peers,
            seat=seat,
            out_after=config.out_after,
        )
        nursery.start_soon(lifecycle.run, name="lifecycle")
        task_status.started(port)


async def _count(store: BlockStore) -> None:
    """The store's first count, in a worker thread: a large store takes a while, and the node
    serves meanwhile (a node that stops does not wait for it)."""
    await trio.to_thread.run_sync(store.count, abandon_on_cancel=True)
