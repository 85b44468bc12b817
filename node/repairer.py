"""Repair on every node: the blocks it should hold and does not are fetched and stored.

Each pass walks the arcs of the ring the node serves, asks the metadata leader for the blocks
referenced there (`Blocks` query, in id order, a page at a time) and checks each against the
store. A missing copy (the node restarted empty, lost part of its disk, or a read or scrub
quarantined a corrupt copy) is fetched from another node (the block's placement first, then the
rest of the ring, where handoff copies are), checked against the metadata's checksum, and
stored. A pass runs when the node starts, every `interval` seconds, sooner after a pass that
left copies missing, and when `repair.start` asks. Copies travel at most `rate` bytes per second,
`transfers` at a time, so foreground reads and writes keep most of the node. Decisions are in
`node/blocks/repair.py`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ringfs.node.blocks.repair import (
    PAGE,
    PassCursor,
    PassRecord,
    RepairConfig,
    RepairLedger,
    TokenBucket,
    ring_share,
    unreferenced,
    within,
)
from ringfs.node.blocks.store import BlockStore
from ringfs.node.cluster.map import MapView
from ringfs.node.cluster.ring import block_point
from ringfs.node.errors import NEWER_MAP, NOT_LEADER, NOT_META, NodeError, Unavailable
from ringfs.node.meta.commands import Abandon, BlockRef, Blocks, Command, Query, decode_result
from ringfs.node.rpc.client import NodePool

log = logging.getLogger(__name__)


class Repairer:
    """The repair loop of one node."""

    def __init__(
        self,
        node_id: str,
        store: BlockStore,
        pool: NodePool,
        view: MapView,
        config: RepairConfig,
        offered: Callable[[str], Awaitable[None]],
    ) -> None:
        """`offered` takes the map a node answered with (`NEWER_MAP`)."""
        self.node_id = node_id
        self.store = store
        self.pool = pool
        self.view = view
        self.config = config
        self.offered = offered
        self.ledger = RepairLedger()
        self._bucket = TokenBucket(config.rate, burst=config.rate)
        self._asked = trio.Event()
        self._ended = trio.Event()
        self._leader: str | None = None
        self._arcs = view.current.arcs(node_id)
        self._cursor: PassCursor | None = None

    @property
    def share(self) -> float:
        """The share of the ring this node serves."""
        return ring_share(self._arcs)

    def ask(self) -> int:
        """Have a pass start now (or right after the running one); returns its number."""
        self._asked.set()
        return self.ledger.ask()

    async def pass_ended(self) -> None:
        """Return when the next pass ends, complete or not: what the node holds may have
        changed (a node being drained may now hold nothing)."""
        await self._ended.wait()

    async def run(self) -> None:
        """Repair until cancelled."""
        failures = 0
        while True:
            self._asked = trio.Event()
            try:
                await self._pass()
            except (Unavailable, NodeError) as exc:
                # The meta group may be electing (or starting, as this node is): soon again.
                log.info("repair pass %d cut short: %s", self.ledger.passes, exc)
                failures += 1
                pause = min(2.0 ** (failures - 1), self.config.retry)
            else:
                failures = 0
                last = self.ledger.last
                # A node being drained (no arcs: its pass is cheap) looks again soon at the
                # copies it holds (some may have come after its pass, from a writer that did not
                # know the map yet), so that it leaves once they are all placed elsewhere.
                draining = not self._arcs and self.store.stats().blocks > 0
                behind = draining or (last is not None and last.left > 0)
                pause = self.config.retry if behind else self.config.interval
            self._ended.set()
            self._ended = trio.Event()
            if self.ledger.wanted > self.ledger.passes:
                continue
            with trio.move_on_after(pause):
                await self._asked.wait()

    async def _pass(self) -> None:
        """Walk this node's arcs once, fetching what the store lacks.

        Raises `Unavailable` or `NodeError` when the metadata cannot list the blocks; the
        pass then ends incomplete (the fetches it started finish first).
        """
        record = self.ledger.begin(time.time())
        self._arcs = self.view.current.arcs(self.node_id)  # the map may have changed
        cursor = self._cursor = PassCursor(self._arcs)
        log.debug("repair pass %d over %.0f%% of the ring", record.number, 100 * self.share)
        limiter = trio.CapacityLimiter(self.config.transfers)
        failure: Unavailable | NodeError | None = None
        held = sorted(await trio.to_thread.run_sync(lambda: list(self.store.ids())))
        orphans: list[bytes] = []
        async with trio.open_nursery() as nursery:
            while not cursor.done:
                first, last = cursor.page()
                try:
                    refs: list[BlockRef] = await self._query(Blocks(first, last, PAGE))
                except (Unavailable, NodeError) as exc:
                    failure = exc
                    break
                ids = [ref.block_id for ref in refs]
                absent = set(await trio.to_thread.run_sync(self.store.absent, ids))
                record.checked += len(refs)
                for ref in refs:
                    if ref.block_id in absent:
                        record.missing += 1
                        await limiter.acquire_on_behalf_of(ref.block_id)
                        nursery.start_soon(self._fetch, ref, limiter)
                # The page listed every referenced id up to its last (up to the arc's end if
                # it was not full): what this node holds in between, no file references.
                orphans += unreferenced(held, first, ids[-1] if len(ids) >= PAGE else last, ids)
                cursor.advance(ids, PAGE)
            if failure is None:
                outside = [b for b in held if not within(self._arcs, block_point(b))]
                record.unreferenced = len(orphans)
                await self._release_misplaced(outside, record, limiter, nursery)
                try:
                    # Copies outside the arcs were not listed: abandoning tells them apart.
                    await self._abandon(orphans + outside, record)
                except (Unavailable, NodeError) as exc:
                    failure = exc
        self.ledger.end(time.time(), complete=failure is None)
        self._cursor = None
        if failure is not None:
            raise failure
        if record.missing:
            log.info(
                "repair pass %d: %d of %d blocks were missing, %d stored again",
                record.number,
                record.missing,
                record.checked,
                record.repaired,
            )

    async def _abandon(self, candidates: list[bytes], record: PassRecord) -> None:
        """Have the metadata abandon the copies older than the orphan age that no chunk map
        references: it alone can tell, atomically with the commits, and it refuses them to
        commits from then on; the garbage collector then deletes them everywhere."""
        ages = await trio.to_thread.run_sync(self.store.ages, candidates)
        old = [b for b in candidates if b in ages and ages[b][0] >= self.config.orphan_age]
        for start in range(0, len(old), PAGE):
            batch = tuple(old[start : start + PAGE])
            referenced = await self._command(Abandon(batch, tuple(ages[b][1] for b in batch)))
            record.abandoned += len(batch) - len(referenced)
        if record.abandoned:
            log.info("repair: %d blocks no file references abandoned", record.abandoned)

    async def _release_misplaced(
        self,
        outside: list[bytes],
        record: PassRecord,
        limiter: trio.CapacityLimiter,
        nursery: trio.Nursery,
    ) -> None:
        """Look at the copies held here outside this node's arcs (handoffs, or all of them on
        a node being drained): each is given to the nodes of its placement that lack it, and
        deleted once every one of them holds a verified copy."""
        for block_id in outside:
            record.misplaced += 1
            await limiter.acquire_on_behalf_of(block_id)
            nursery.start_soon(self._release, block_id, record, limiter)

    async def _release(
        self, block_id: bytes, record: PassRecord, limiter: trio.CapacityLimiter
    ) -> None:
        try:
            try:
                data, mine = await trio.to_thread.run_sync(self.store.get, block_id)
            except NodeError:
                return  # gone meanwhile, or corrupt (and quarantined by the read)
            for node in self.view.current.placement(block_id):
                try:
                    theirs = await self.pool.call(node.address, "block.verify", [block_id])
                except NodeError as exc:
                    if exc.name != "ENOENT" or not await self._hand(
                        node.address, block_id, data, mine
                    ):
                        return
                    theirs = mine
                except Unavailable:
                    return  # its own pass fetches it, if a file needs it
                if theirs != mine:
                    return
            if await trio.to_thread.run_sync(self.store.delete, block_id):
                record.released += 1
                log.debug("repair: released handoff copy of %s", block_id.hex())
        finally:
            limiter.release_on_behalf_of(block_id)

    async def _hand(self, address: str, block_id: bytes, data: bytes, stored: bytes) -> bool:
        """Give a placement node that lacks it this node's copy (a handoff held here, or the
        copy of a node being drained), so that it need not wait for its own next pass."""
        await trio.sleep(self._bucket.take(len(data), trio.current_time()))
        epoch = self.view.current.epoch
        try:
            await self.pool.call(address, "block.put", [block_id, stored, data, epoch])
        except (Unavailable, NodeError) as exc:
            if isinstance(exc, NodeError) and exc.name == NEWER_MAP:
                await self.offered(exc.detail)
            log.debug("repair: block %s not handed to %s: %s", block_id.hex(), address, exc)
            return False
        self.ledger.note_handed(len(data))
        return True

    async def _fetch(self, ref: BlockRef, limiter: trio.CapacityLimiter) -> None:
        """Copy one block here from a node that has a good copy."""
        try:
            cmap = self.view.current
            candidates = [
                *cmap.placement(ref.block_id),
                *cmap.fallbacks(ref.block_id),
                *cmap.draining(),
            ]
            sources = [n for n in candidates if n.node_id != self.node_id]
            for node in sources:
                try:
                    params = [ref.block_id, cmap.epoch]
                    data, stored = await self.pool.call(node.address, "block.get", params)
                except NodeError as exc:
                    if exc.name == NEWER_MAP:
                        await self.offered(exc.detail)  # the next pass goes by it
                    continue
                except (Unavailable, TypeError, ValueError):
                    continue
                if stored != ref.checksum or not isinstance(data, bytes):
                    continue
                await trio.sleep(self._bucket.take(len(data), trio.current_time()))
                try:
                    await trio.to_thread.run_sync(self.store.put, ref.block_id, data, ref.checksum)
                except NodeError as exc:  # a full disk, a failing one
                    log.warning("repair: block %s not stored: %s", ref.block_id.hex(), exc)
                    break
                self.ledger.note_repaired(len(data))
                return
            else:
                log.warning("repair: no node could give block %s", ref.block_id.hex())
            assert self.ledger.current is not None
            self.ledger.current.failed += 1
        finally:
            limiter.release_on_behalf_of(ref.block_id)

    async def _query(self, query: Query) -> Any:
        """Ask the meta-group leader, going to the leader a member names."""
        return decode_result(query, await self._meta_call("meta.query", [query.to_wire()]))

    async def _command(self, command: Command) -> Any:
        """Apply a command that needs no session (it is idempotent) through the leader."""
        params = [self.node_id.encode(), None, None, command.to_wire()]
        result, *_ = await self._meta_call("meta.apply", params)
        return decode_result(command, result)

    async def _meta_call(self, method: str, params: list[Any]) -> Any:
        members = [node.address for node in self.view.current.meta_nodes()]
        if self._leader is not None and self._leader not in members:
            members.append(self._leader)  # out of the map's group, maybe not the Raft group's
        order = sorted(members, key=lambda address: address != self._leader)
        tried: list[str] = []
        while order:
            address = order.pop(0)
            tried.append(address)
            try:
                wire = await self.pool.call(address, method, params)
            except Unavailable:
                continue
            except NodeError as exc:
                if exc.name not in (NOT_LEADER, NOT_META):
                    raise
                named = self.view.current.address_of(exc.detail)
                if named is not None and named not in tried:
                    order = [named, *(a for a in order if a != named)]
                continue
            self._leader = address
            return wire
        raise Unavailable("metadata (no meta-group leader answered)", tried)

    def stats(self) -> dict[str, Any]:
        """Cheap counters for `repair.status` and `node.stats`."""
        ledger = self.ledger
        cursor = self._cursor
        return {
            "passes": ledger.passes,
            "clean": ledger.clean,
            "wanted": ledger.wanted,
            "repaired": ledger.repaired,
            "repaired_bytes": ledger.repaired_bytes,
            "handed": ledger.handed,
            "handed_bytes": ledger.handed_bytes,
            "share": self.share,
            "rate": self.config.rate,
            "current": None if ledger.current is None else ledger.current.to_wire(),
            "progress": None if cursor is None else cursor.progress(),
            "last": None if ledger.last is None else ledger.last.to_wire(),
        }
