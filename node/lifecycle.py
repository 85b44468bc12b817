"""A member's way through the cluster map, once it is in: the moves no operator has to make.

A node makes its own moves: back after being marked out, it joins again; joining, it becomes
active once a complete repair pass found nothing missing (it holds every block placed on it);
draining, it leaves once it holds no block and the meta group no longer counts it (see
`ringfs.node.seat`). The meta-group leader marks out a node that has not answered for
`out_after` seconds (as Ceph marks an OSD out after ten minutes down), so its blocks are
placed on the others and repair copies them there. Each move is a change of the
map (`ringfs.node.cluster.changes`) through the register. Decisions are the pure functions
here; `Lifecycle` runs them.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import trio

from ringfs.node.agreement import MapKeeper
from ringfs.node.blocks.store import BlockStore
from ringfs.node.cluster.map import PLACED
from ringfs.node.cluster.paxos import InDoubt
from ringfs.node.errors import NodeError, Unavailable
from ringfs.node.repairer import Repairer
from ringfs.node.rpc.client import NodePool
from ringfs.node.seat import MetaSeat

log = logging.getLogger(__name__)

#: Seconds at most between two looks at this node's state (and, on the leader, at the others).
INTERVAL = 5.0
#: Seconds a node asked whether it is up has to answer.
PING_LIMIT = 5.0


def own_move(state: str, filled: bool, empty: bool, seated: bool) -> str | None:
    """The change a node in `state` makes to its own entry: `filled` when a complete repair
    pass since it joined found nothing missing, `empty` when its store holds no block,
    `seated` while it holds a seat in the meta group (which must be handed over first)."""
    if state == "down-out":
        return "rejoin"
    if state == "joining" and filled:
        return "activate"
    if state == "draining" and empty and not seated:
        return "leave"
    return None


@dataclass
class OutTimer:
    """When each node last answered, as the leader saw it. A node is overdue once it has not
    answered for `out_after` seconds of this leader's watch (a new leader gives every node the
    full time again)."""

    out_after: float
    last_seen: dict[str, float] = field(default_factory=dict)

    def answered(self, node_id: str, now: float) -> None:
        self.last_seen[node_id] = now

    def overdue(self, watched: Iterable[str], now: float) -> list[str]:
        """The nodes of `watched` silent for `out_after` seconds; a node first watched now
        starts its time now."""
        late = []
        for node_id in watched:
            seen = self.last_seen.setdefault(node_id, now)
            if now - seen >= self.out_after:
                late.append(node_id)
        return late

    def reset(self) -> None:
        self.last_seen.clear()


class Lifecycle:
    """Makes this node's own moves, and, while this node leads the meta group, marks out the
    nodes down for too long."""

    def __init__(
        self,
        node_id: str,
        keeper: MapKeeper,
        repairer: Repairer,
        store: BlockStore,
        pool: NodePool,
        seat: MetaSeat,
        out_after: float,
    ) -> None:
        self.node_id = node_id
        self.keeper = keeper
        self.repairer = repairer
        self.store = store
        self.pool = pool
        self.seat = seat
        self.timer = OutTimer(out_after)
        #: The repair pass that, found clean, shows a joining node filled.
        self._filling_pass: int | None = None

    async def run(self) -> None:
        """After each repair pass (which may have filled or emptied this node), and at least
        every `INTERVAL` seconds, until cancelled; raises Departed once this node left."""
        while True:
            with trio.move_on_after(INTERVAL):
                await self.repairer.pass_ended()
            try:
                await self._own_move()
                if self.seat.leads():
                    await self._mark_out()
                else:
                    self.timer.reset()
            except (Unavailable, InDoubt, ValueError) as exc:
                log.info("cluster map: change not made (%s); trying again", exc)

    async def _own_move(self) -> None:
        state = self.keeper.view.current.node(self.node_id).state
        if state != "joining":
            self._filling_pass = None
        elif self._filling_pass is None:
            self._filling_pass = self.repairer.ask()
        filled = self._filling_pass is not None and self.repairer.ledger.clean >= self._filling_pass
        empty = state == "draining" and self._holds_nothing()
        move = own_move(state, filled, empty, seated=self.seat.replica is not None)
        if move is not None:
            cmap = await self.keeper.change(move, [self.node_id])
            log.info("cluster map epoch %d: %s (%s)", cmap.epoch, self.node_id, move)

    def _holds_nothing(self) -> bool:
        stats = self.store.stats()
        return stats.counted and stats.blocks == 0

    async def _mark_out(self) -> None:
        """Ask every other placed node whether it is up; mark out those silent too long."""
        cmap = self.keeper.view.current
        others = [n for n in cmap.nodes if n.state in PLACED and n.node_id != self.node_id]
        now = trio.current_time()
        async with trio.open_nursery() as nursery:
            for node in others:
                nursery.start_soon(self._ping, node.node_id, node.address, now)
        for node_id in self.timer.overdue([n.node_id for n in others], now):
            log.warning(
                "node %s: no answer for %.0f s: marking it out", node_id, self.timer.out_after
            )
            try:
                await self.keeper.change("out", [node_id])
            except ValueError as exc:  # too few nodes would be left: it stays in
                log.warning("node %s stays in: %s", node_id, exc)
                self.timer.answered(node_id, now)  # asked again after another out-time

    async def _ping(self, node_id: str, address: str, now: float) -> None:
        try:
            await self.pool.call(address, "node.info", [], time_limit=PING_LIMIT)
        except (Unavailable, NodeError):
            return
        self.timer.answered(node_id, now)
