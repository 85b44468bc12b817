"""Agreeing on the cluster map, and following it: the register holds the cluster's map.

Each node, when it starts, proposes to the register (`ringfs.node.register`) a change that
founds the cluster with the map it was started with, under a new random cluster id, if the
register is still empty, and otherwise keeps what is there. Every node thus learns the one map
the cluster agreed on and its id. One started with other members or replication settings stops
with a clear error instead of forming a second cluster with its own placement and its own
metadata group. A node started with new member addresses (`--cluster`) proposes them, so a
cluster moved to other ports or hosts agrees on where its nodes are. From then on the node
goes by the register's map, and reads it again every `FOLLOW_INTERVAL` seconds (at once when a
peer or client names a newer epoch) to follow its changes. A change (`map.change`: an
operator's, a new node's `add` through `join`, a node's own move) is proposed by the node asked,
as a function of the map the register holds when it is decided.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trio

from ringfs.node.cluster.changes import change_map
from ringfs.node.cluster.map import ClusterMap, MapView, NodeInfo
from ringfs.node.cluster.paxos import Change, InDoubt
from ringfs.node.errors import ConfigError, Departed, NodeError, Unavailable
from ringfs.node.register import NodeRegister
from ringfs.node.rpc.client import NodePool
from ringfs.node.rpc.protocol import ClusterIdentity

log = logging.getLogger(__name__)

#: Seconds one round of proposals may take before the node says it is still waiting.
ROUND = 30.0
#: Seconds a change asked of this node (`map.change`) waits for a majority of acceptors before
#: it is answered with EAGAIN: an operator learns soon that the change cannot be made now.
CHANGE_WAIT = 10.0
#: Seconds between two reads of the register by a node that follows it.
FOLLOW_INTERVAL = 5.0
#: Seconds a node that made a change waits at most for the others to hear of it.
ANNOUNCE_WAIT = 1.0


def founding(mine: ClusterMap, cluster_id: str) -> Change:
    """The change each node proposes at start: found the cluster with `mine` as cluster
    `cluster_id` if nothing is agreed yet, else keep what is."""
    founded = dataclasses.replace(mine.pinned(), cluster_id=cluster_id).to_wire()

    def change(current: Any) -> tuple[Any, Any]:
        return (founded if current is None else current), None

    return change


def readdress(given: tuple[NodeInfo, ...]) -> Change:
    """The change a node started with `--cluster` proposes: the addresses it was `given` (of
    the members the map has), in a new epoch, unless the map has them already (or is no map:
    then it is left alone)."""

    def change(current: Any) -> tuple[Any, Any]:
        try:
            cmap = ClusterMap.from_wire(current)
        except NodeError:
            return current, None
        moved = cmap.readdressed(given)
        if moved == cmap:
            return current, None
        return dataclasses.replace(moved, epoch=cmap.epoch + 1).to_wire(), None

    return change


def disagreement(agreed: ClusterMap, mine: ClusterMap) -> str | None:
    """Why a node started with `mine` cannot serve in the cluster that agreed on `agreed`.

    A node that was in the cluster (its map has the cluster id) goes by the cluster's map,
    whatever changed since. One that starts for the first time must have been given the map
    the cluster was founded with, or, if the cluster changed since, members it still has."""
    if mine.cluster_id:
        if mine.cluster_id != agreed.cluster_id:
            return f"this node belongs to cluster {mine.cluster_id}, not {agreed.cluster_id}"
        return None
    ours = sorted(node.node_id for node in mine.nodes)
    theirs = sorted(node.node_id for node in agreed.nodes)
    founding = agreed.epoch == 1
    if (ours != theirs) if founding else not set(ours) <= set(theirs):
        return (
            f"this node was started with members {', '.join(ours)}, but the cluster agreed on "
            f"{', '.join(theirs)}"
        )
    if mine.replicas != agreed.replicas:
        return (
            f"this node was started with {mine.replicas} replicas, but the cluster agreed on "
            f"{agreed.replicas}"
        )
    our_meta, their_meta = list(mine.meta_ids()), list(agreed.meta_ids())
    if founding and our_meta != their_meta:
        return (
            f"this node takes {', '.join(our_meta)} for the meta group, but the cluster agreed "
            f"on {', '.join(their_meta)}"
        )
    return None


async def agree_on_map(register: NodeRegister, mine: ClusterMap) -> ClusterMap:
    """The map the cluster agreed on, with its cluster id, once a majority of the register's
    acceptors answered (it waits as long as it takes, saying so every `ROUND` seconds).

    Raises ConfigError when that map is not this node's."""
    change = founding(mine, mine.cluster_id or os.urandom(8).hex())
    while True:
        try:
            _, value = await register.propose(change, trio.current_time() + ROUND)
        except (Unavailable, InDoubt) as exc:
            log.info("cluster map: not agreed yet (%s); asking again", exc)
            continue
        try:
            agreed = ClusterMap.from_wire(value)
        except NodeError as exc:
            raise ConfigError(f"the cluster map register holds no map: {exc}") from exc
        problem = disagreement(agreed, mine)
        if problem is not None:
            raise ConfigError(problem)
        log.info("cluster %s: map agreed (%d nodes)", agreed.cluster_id, len(agreed.nodes))
        return agreed


async def join(pool: NodePool, seeds: tuple[str, ...], joining: NodeInfo) -> ClusterMap:
    """Have a node of the cluster (the first of `seeds` that answers) add `joining` to the map;
    returns the map with it. Asks again while no majority of the register's acceptors answers.

    Raises ConfigError when the cluster refuses it (an id or address in use) or no seed
    answers."""
    arguments = [joining.node_id, joining.host, joining.port, joining.weight, joining.zone]
    while True:
        failures: list[str] = []
        undecided = False  # a seed answered, but its register had no majority yet
        for seed in seeds:
            try:
                wire = await pool.call(seed, "map.change", ["add", arguments], time_limit=ROUND)
                return ClusterMap.from_wire(wire)
            except Unavailable as exc:
                failures.append(str(exc))
            except NodeError as exc:
                if exc.name != "EAGAIN":
                    raise ConfigError(f"joining through {seed}: {exc.detail}") from None
                failures.append(f"{seed}: {exc.detail}")
                undecided = True
        if not undecided:
            raise ConfigError(f"no node to join answered: {'; '.join(failures)}")
        log.info("joining: not agreed yet (%s); asking again", "; ".join(failures))
        await trio.sleep(1.0)


def requested(operation: str, arguments: list[Any]) -> Change:
    """An operator's change of the map (`ringfs.node.cluster.changes`), applied to whatever
    map the register holds when it is decided; its result is why it could not be, if so."""

    def change(current: Any) -> tuple[Any, Any]:
        try:
            cmap = ClusterMap.from_wire(current)
            return change_map(cmap, operation, arguments).to_wire(), None
        except (NodeError, ValueError) as exc:
            return current, str(exc)

    return change


class MapKeeper:
    """This node's side of the cluster map: it agrees on it at start, then goes by the
    register's map, follows its changes, makes the changes operators ask for, and keeps the
    map in the data directory (`path`)."""

    def __init__(
        self,
        register: NodeRegister,
        view: MapView,
        identity: ClusterIdentity,
        path: Path,
        changed: Callable[[], object],
    ) -> None:
        """`changed` is called each time the node goes by a newer map."""
        self.register = register
        self.view = view
        self.identity = identity
        self.path = path
        self.changed = changed
        self._wake = trio.Event()
        # Set once the cluster agreed on its map at this start: changes wait for it.
        self._agreed = trio.Event()

    async def run(self, given: tuple[NodeInfo, ...] | None) -> None:
        """Agree on the map (with the addresses this node was `given` on its command line, if
        any), then follow it until cancelled.

        Raises ConfigError when the cluster agreed on another map (see `agree_on_map`), and
        Departed once this node is removed from it."""
        agreed = await agree_on_map(self.register, self.view.current)
        self.identity.cluster_id = agreed.cluster_id
        self._agreed.set()
        while given is not None:
            try:
                change = readdress(given)
                _, value = await self.register.propose(change, trio.current_time() + ROUND)
                agreed = ClusterMap.from_wire(value)
                break
            except (Unavailable, InDoubt) as exc:
                log.info("cluster map: new addresses not agreed yet (%s); asking again", exc)
        await self._adopt(agreed)
        while True:
            with trio.move_on_after(FOLLOW_INTERVAL):
                await self._wake.wait()
            self._wake = trio.Event()
            try:
                agreed = ClusterMap.from_wire(await self.register.read(trio.current_time() + ROUND))
            except (Unavailable, NodeError) as exc:
                log.debug("cluster map: not read (%s)", exc)
                continue
            if agreed.epoch > self.view.current.epoch:
                await self._adopt(agreed)

    def heard_of(self, epoch: int) -> None:
        """A peer or client goes by map `epoch`: if it is newer, read the register now."""
        if epoch > self.view.current.epoch:
            self._wake.set()

    async def offered(self, detail: str) -> None:
        """A node answered with its map (`NEWER_MAP`): go by it if it is a newer one of this
        cluster (every node goes only by maps the register agreed on)."""
        try:
            cmap = ClusterMap.from_wire(json.loads(detail))
        except (ValueError, NodeError):
            return
        current = self.view.current
        if cmap.cluster_id == current.cluster_id and cmap.epoch > current.epoch:
            await self._adopt(cmap)

    async def change(self, operation: str, arguments: list[Any]) -> ClusterMap:
        """Make an operator's change and go by the map it gives. Raises ValueError saying why
        the change cannot be made, Unavailable when no majority of acceptors answers, and
        Departed if the change removed this node."""
        deadline = trio.current_time() + CHANGE_WAIT
        with trio.move_on_at(deadline):
            await self._agreed.wait()  # the register holds no map before
        if not self._agreed.is_set():
            raise Unavailable("the cluster map (not agreed at this node's start yet)")
        refusal, value = await self.register.propose(requested(operation, arguments), deadline)
        if refusal is not None:
            raise ValueError(refusal)
        agreed = ClusterMap.from_wire(value)
        if agreed.epoch > self.view.current.epoch:
            await self._announce(agreed)
            await self._adopt(agreed)
        return agreed

    async def _announce(self, cmap: ClusterMap) -> None:
        """Tell the nodes in force before or after `cmap` that it is agreed, so that each reads
        the register now rather than at its next follow: a change takes effect everywhere in a
        round trip, also the change of a node that leaves and stops at once."""
        live = {n.node_id: n.address for m in (self.view.current, cmap) for n in m.nodes
                if n.state != "removed"}  # fmt: skip
        live.pop(self.register.node_id, None)
        with trio.move_on_after(ANNOUNCE_WAIT):
            async with trio.open_nursery() as nursery:
                for address in live.values():
                    nursery.start_soon(self._tell, address, cmap.epoch)

    async def _tell(self, address: str, epoch: int) -> None:
        try:
            await self.register.pool.call(address, "node.info", [epoch], ANNOUNCE_WAIT)
        except (Unavailable, NodeError) as exc:
            log.debug("cluster map: %s not told of epoch %d (%s)", address, epoch, exc)

    async def _adopt(self, cmap: ClusterMap) -> None:
        """Go by `cmap`; raises Departed if this node is no longer in it (having kept that
        map first, so that a start after this one knows, as `ringfs up` does before it)."""
        log.info("cluster %s: going by map epoch %d", cmap.cluster_id, cmap.epoch)
        node_id = self.register.node_id
        await trio.to_thread.run_sync(cmap.save, self.path)
        if node_id not in {node.node_id for node in cmap.nodes if node.state != "removed"}:
            raise Departed(f"node {node_id} was removed from cluster {cmap.cluster_id}")
        self.view.current = cmap
        self.changed()
