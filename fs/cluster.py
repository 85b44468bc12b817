"""The cluster client: placement, replicated block writes, reads with fallback, metadata calls.

Everything the mount asks of the cluster goes through `Cluster`. It knows the cluster map, so it
knows which nodes hold a block (the ring's preference list) and which nodes replicate the
metadata (the meta group, whose Raft leader answers metadata calls).
It never returns half an answer: a call either succeeds, raises the node's `NodeError`, or raises
`Unavailable` once no replica (or no meta-group leader) could answer within the deadline.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ringfs.fs.chunkmaps import KnownMap
from ringfs.fs.replicas import ReadLoad
from ringfs.node.cluster.map import ClusterMap, NodeInfo
from ringfs.node.errors import (
    CORRUPT,
    IN_DOUBT,
    NEWER_MAP,
    NOT_LEADER,
    NOT_META,
    SESSION_EXPIRED,
    AuthenticationError,
    NodeError,
    NoReply,
    ProtocolError,
    Unavailable,
)
from ringfs.node.meta import commands
from ringfs.node.meta.client_ids import mint_client_id
from ringfs.node.meta.commands import (
    Attr,
    Chunk,
    Command,
    OpenSession,
    Query,
    ReadChunks,
    decode_result,
)
from ringfs.node.meta.feed import Changes
from ringfs.node.rpc.client import ClientConfig, NodePool

log = logging.getLogger(__name__)

#: Seconds between two looks at the cluster map by a mount.
MAP_FOLLOW_INTERVAL = 5.0


@dataclass(frozen=True)
class ClusterConfig:
    seeds: tuple[str, ...]
    client: ClientConfig
    # How long a metadata call keeps retrying (elections, unreachable members) before EIO; a
    # command in doubt (a leader may have taken it) retries until its outcome is known.
    meta_deadline: float = 20.0
    # Blocks being written at once (each holds its buffer until every replica answered).
    blocks_in_flight: int = 8
    # Seconds a replica write may take once a write quorum has the block; a slower node is
    # left behind (and suspect), so one hung node cannot hold every write slot.
    replica_grace: float = 2.0
    # Seconds one metadata call waits for one member before it tries another (the call itself
    # retries until `meta_deadline`); a leader that hangs costs this much, not the request
    # timeout.
    meta_attempt: float = 5.0


@dataclass(frozen=True)
class StoredBlock:
    """Where a block write landed."""

    block_id: bytes
    checksum: bytes
    nodes: tuple[str, ...]


def _nothing() -> None:
    """A callback that does nothing (the default of one nobody needs)."""


@dataclass(frozen=True)
class Answer:
    """A metadata command's result, with the attributes the leader read after applying it of
    every inode the command changed, and the term of the leader if this client watches those
    inodes now (0: it does not; `ringfs.node.meta.watches`)."""

    result: Any
    attrs: list[Attr]
    term: int = 0


class Cluster:
    """Client-side view of one ringfs cluster."""

    def __init__(
        self, config: ClusterConfig, pool: NodePool, cmap: ClusterMap, nursery: trio.Nursery
    ) -> None:
        self.config = config
        self.pool = pool
        self.map = cmap
        self.client_id = mint_client_id(config.client.secret)
        self._session_open = False
        self._opening = trio.Lock()
        #: Called with the new client id when the metadata ended this client's session.
        self.session_listeners: list[Callable[[bytes], None]] = []
        self._nursery = nursery
        self._blocks_in_flight = trio.Semaphore(config.blocks_in_flight)
        self._next_seq = 1
        self._unacked: set[int] = set()
        self._meta_leader: str | None = None
        self.reads = ReadLoad()
        #: Block data stored at a write quorum, and read, since the client started.
        self.bytes_written = 0
        self.bytes_read = 0

    @classmethod
    async def create(cls, config: ClusterConfig, *, nursery: trio.Nursery) -> Cluster:
        """Connect to the first reachable seed and fetch the cluster map.

        Raises `Unavailable` if no seed answers, `AuthenticationError` on a wrong secret.
        """
        pool = NodePool(config.client, nursery)
        cmap = await _fetch_map(pool, config.seeds)
        # From now on, a node of another cluster is refused (one reached through a stale
        # seed list, or a map that names a node of another cluster).
        config.client.identity.cluster_id = cmap.cluster_id
        log.debug(
            "cluster map epoch %d: %s",
            cmap.epoch,
            ", ".join(f"{n.node_id}@{n.address}" for n in cmap.nodes),
        )
        return cls(config, pool, cmap, nursery)

    async def aclose(self) -> None:
        await self.pool.aclose()

    async def follow_map(self) -> None:
        """Ask a node for the cluster map every `MAP_FOLLOW_INTERVAL` seconds, until
        cancelled, and go by a newer one (of the same cluster): a node's new address, or a
        new placement, reaches this client without a remount."""
        while True:
            await trio.sleep(MAP_FOLLOW_INTERVAL)
            await self.refresh_map()

    async def refresh_map(self) -> ClusterMap:
        """Ask the first node that answers for the cluster map, and go by it if it is newer;
        returns the map this client goes by."""
        for address in self.pool.order([node.address for node in self.map.holders()]):
            try:
                found = ClusterMap.from_wire(await self.pool.call(address, "map.get", []))
            except (Unavailable, NodeError):
                continue
            self._go_by(found)
            break
        return self.map

    def offered(self, detail: str) -> bool:
        """A node answered with its map (`NEWER_MAP`): go by it if it is newer; whether it was."""
        try:
            found = ClusterMap.from_wire(json.loads(detail))
        except (ValueError, NodeError):
            return False
        return self._go_by(found)

    def _go_by(self, found: ClusterMap) -> bool:
        if not self._newer(found):
            return False
        log.info("cluster map epoch %d (was %d)", found.epoch, self.map.epoch)
        self.map = found
        self.config.client.identity.cluster_id = found.cluster_id
        return True

    def _newer(self, found: ClusterMap) -> bool:
        """Whether `found` is a later map of this client's cluster: a higher epoch, or the
        first one named after the nodes agreed (the map this client started with may be
        older than the agreement)."""
        if self.map.cluster_id not in ("", found.cluster_id):
            return False
        return found.epoch > self.map.epoch or (not self.map.cluster_id and found.cluster_id != "")

    # -- blocks ------------------------------------------------------------------------------

    async def put_block(self, block_id: bytes, data: memoryview, checksum: bytes) -> StoredBlock:
        """Write a block to its replicas in parallel; return once a write quorum has it.

        Preferred nodes that fail (or are suspect from a recent failure) are replaced by the
        next nodes on the ring (handoff: the placement node fetches the block at its next
        repair pass). The remaining replicas finish in the background, each within
        `replica_grace` of the quorum. Raises
        `Unavailable` when fewer than the write quorum could store it.
        """
        await self._blocks_in_flight.acquire()
        write = _ReplicatedWrite(self, block_id, data, checksum)
        self._nursery.start_soon(write.run, self._blocks_in_flight, name="block-put")
        await write.quorum_reached.wait()
        if len(write.stored) < write.quorum:
            refusals = {exc.name for exc in write.errors if isinstance(exc, NodeError)}
            if len(refusals) == 1 and all(isinstance(e, NodeError) for e in write.errors):
                # Every replica said the same (ENOSPC: the disks are full): say it too.
                raise NodeError(refusals.pop(), f"block {block_id.hex()}")
            raise Unavailable(
                f"block {block_id.hex()}: stored on {len(write.stored)} of "
                f"{write.quorum} needed replicas",
                write.failed,
            )
        self.bytes_written += len(data)
        return StoredBlock(block_id, checksum, tuple(write.stored))

    async def get_block(
        self, block_id: bytes, checksum: bytes, span: tuple[int, int] | None = None
    ) -> bytes:
        """Read a block, or with `span` (offset, length; within the block) only those bytes of
        it, from one replica, falling back to the next (see `read_order`) on any failure.

        The node verifies the whole block's checksum before answering; a copy that fails it is
        reported (logged) and the next replica is tried. Raises `Unavailable` if none answers.
        """
        tried: list[str] = []
        order = self.read_order(block_id)
        while order:
            address = order.pop(0)
            tried.append(address)
            try:
                reply = await self._block_get(address, block_id, span)
            except Unavailable:
                continue
            except NodeError as exc:
                if exc.name == NEWER_MAP:
                    # Asked by an older map: the rest by the newer one, also when another
                    # task went by it while this call was out.
                    self.offered(exc.detail)
                    order = [a for a in self.read_order(block_id) if a not in tried]
                elif exc.name == CORRUPT:
                    log.warning(
                        "node %s: block %s is corrupt, reading another replica",
                        address,
                        block_id.hex(),
                    )
                elif exc.name != "ENOENT":
                    log.warning("node %s: block %s: %s", address, block_id.hex(), exc)
                continue
            if not (
                isinstance(reply, list)
                and len(reply) == 2
                and all(isinstance(part, bytes) for part in reply)
                and (span is None or len(reply[0]) == span[1])
            ):
                log.warning("node %s: malformed block.get reply for %s", address, block_id.hex())
                continue
            data: bytes = reply[0]
            stored_checksum: bytes = reply[1]
            if stored_checksum != checksum:
                log.warning(
                    "node %s: block %s has checksum %s, expected %s",
                    address,
                    block_id.hex(),
                    bytes(stored_checksum).hex(),
                    checksum.hex(),
                )
                continue
            self.bytes_read += len(data)
            return data
        raise Unavailable(f"block {block_id.hex()}", tried)

    async def _block_get(self, address: str, block_id: bytes, span: tuple[int, int] | None) -> Any:
        """`block.get` on one node, by the map as it is now, counted in its read load while it
        is out."""
        sent_at = trio.current_time()
        self.reads.sent(address, sent_at)
        params = [block_id, self.map.epoch, *(span or ())]
        try:
            reply = await self.pool.call(address, "block.get", params)
        except BaseException:
            self.reads.dropped(address, sent_at)
            raise
        self.reads.answered(address, sent_at, trio.current_time())
        return reply

    def read_order(self, block_id: bytes) -> list[str]:
        """The block's replicas in an order drawn by their read load (see
        `ringfs.fs.replicas`; suspect ones last), then those still joining (they may not have
        it yet), then the rest of the ring (handoffs), then the nodes being drained, healthy
        before suspect."""
        placement = self.map.placement(block_id)
        preferred = [(node.address, node.weight) for node in placement if node.state == "active"]
        rest = [node.address for node in placement if node.state != "active"]
        rest += [node.address for node in self.map.fallbacks(block_id)]
        rest += [node.address for node in self.map.draining()]
        now = trio.current_time()
        return self.reads.order(preferred, now, self.pool.is_suspect) + self.pool.order(rest)

    # -- metadata ----------------------------------------------------------------------------

    def _meta_candidates(self) -> list[str]:
        """Meta-group members to try: the last leader we heard of first (it may be a member
        the map has taken out of the group and the Raft group not yet), then the others,
        healthy ones before those that failed lately."""
        members = [node.address for node in self.map.meta_nodes()]
        if self._meta_leader is not None:
            members = [self._meta_leader, *(m for m in members if m != self._meta_leader)]
        return self.pool.order(members)

    def take_seq(self) -> int:
        """A sequence number for a command about to be applied: the change feed names the
        command by it (see `meta_apply`)."""
        seq = self._next_seq
        self._next_seq += 1
        return seq

    async def meta_apply(self, command: Command) -> Any:
        """Apply one metadata command (see `meta_command`); return its result."""
        return (await self.meta_command(command)).result

    async def meta_command(self, command: Command, seq: int | None = None) -> Answer:
        """Apply one metadata command exactly once, retrying through node failures.

        Each call carries (client id, sequence number: `seq`, or the next one), so a retry
        after a lost answer returns the first outcome instead of applying twice. Raises
        `NodeError` for a failed command, `Unavailable` after `meta_deadline` if no leader took
        it. A command a leader may have taken is retried until its outcome is known (see
        `_meta_call`): reporting a failure for it could not stop a later leader from
        committing it. One the metadata refused because it ended this client's session fails
        (SESSION_EXPIRED), and the next command opens a new session.
        """
        if seq is None:
            seq = self.take_seq()
        client_id = await self._session()
        self._unacked.add(seq)
        try:
            wire = await self._meta_call(
                "meta.apply",
                [client_id, seq, min(self._unacked), command.to_wire()],
                command=command.OP,
            )
        except NodeError as exc:
            if exc.name == SESSION_EXPIRED:
                self._session_ended(client_id)
            raise
        finally:
            self._unacked.discard(seq)
        if not (isinstance(wire, list) and len(wire) == 3 and isinstance(wire[1], list)):
            raise ProtocolError(f"malformed {command.OP} answer")
        result, attrs, term = wire
        if not _is_term(term):
            raise ProtocolError(f"malformed {command.OP} answer: bad term")
        try:
            decoded = decode_result(command, result)
            return Answer(decoded, [Attr.from_wire(a) for a in attrs], term)
        except NodeError as exc:
            raise ProtocolError(f"malformed {command.OP} answer: {exc}") from exc

    async def _session(self) -> bytes:
        """This client's id, once its session is open: a client that only reads (`ringfs
        status`) never opens one."""
        if not self._session_open:
            async with self._opening:
                if not self._session_open:
                    opening = OpenSession()
                    params = [self.client_id, None, None, opening.to_wire()]
                    await self._meta_call("meta.apply", params, command=opening.OP)
                    self._session_open = True
        return self.client_id

    def _session_ended(self, client_id: bytes) -> None:
        """The metadata ended the session of `client_id` (it heard nothing from this client
        for longer than its mount expiry): go on under a new id."""
        if client_id != self.client_id:
            return  # another command found out first
        log.error(
            "the cluster ended this client's session (no contact for longer than its mount "
            "expiry): the directories it held and the files it had unlinked while open are "
            "gone; commands in flight failed; going on with a new session"
        )
        self.client_id = mint_client_id(self.config.client.secret)
        self._session_open = False
        for listener in self.session_listeners:
            listener(self.client_id)

    async def meta_query(self, query: Query) -> Any:
        """Run a linearizable read-only metadata query on the leader; returns the result."""
        return decode_result(query, await self._meta_call("meta.query", [query.to_wire()]))

    async def meta_changes(self, since: int, failed: Callable[[], None] = _nothing) -> Changes:
        """What changed in the namespace after log index `since`, from the leader's change
        feed, with the directories this mount is asked to give back; the leader waits a moment
        for a change before it answers that none came. `failed` is called at once when an
        attempt finds a node gone (it goes on with the others)."""
        params = [since, self.client_id]
        return Changes.from_wire(await self._meta_call("meta.changes", params, failed=failed))

    async def read_chunks(
        self, ino: int, known: KnownMap | None = None
    ) -> tuple[Attr, list[Chunk], int]:
        """A file's attributes and whole chunk map, read in pages that all show one version
        of the file (if it changes between pages, the reading starts over), and the term of
        the leader that registered this client as watching the file (0: none did). With
        `known` (a version of the file and its map), the map is that one while the file is at
        that version, and the leader sends none."""
        while True:
            attr, chunks, term = await self._chunk_page(ino, 0, known[0] if known else 0)
            if known is not None and attr.version == known[0]:
                return attr, known[1], term
            page = chunks
            while _maybe_more(page):
                again, page, _ = await self._chunk_page(ino, page[-1].idx + 1)
                if again.version != attr.version:
                    break
                chunks = chunks + page
            else:
                return attr, chunks, term

    async def _chunk_page(
        self, ino: int, first: int, unless_version: int = 0
    ) -> tuple[Attr, list[Chunk], int]:
        query = ReadChunks(ino, first, commands.CHUNKS_PER_MESSAGE, unless_version)
        wire = await self._meta_call("meta.read_chunks", [self.client_id, query.to_wire()])
        if not (isinstance(wire, list) and len(wire) == 2 and _is_term(wire[1])):
            raise ProtocolError("malformed read_chunks answer")
        attr, chunks = decode_result(query, wire[0])
        return attr, chunks, wire[1]

    async def _meta_call(
        self,
        method: str,
        params: Sequence[Any],
        command: str = "",
        failed: Callable[[], None] = _nothing,
    ) -> Any:
        """Call the meta-group leader, following redirects and riding out elections.

        A member that does not lead answers NOT_LEADER naming the leader it knows of; an
        unreachable member is skipped. Retries with the same parameters (so a command is still
        applied once) until `meta_deadline`, then raises `Unavailable`. For a `command`, once an
        answer says a leader proposed it and lost the lead (IN_DOUBT), or a request went out
        and no answer came back, it is in doubt: the retries go on past the deadline, until a
        leader answers with its outcome. `failed` hears of each node that did not answer.
        """
        delay = 0.05
        tried: list[str] = []
        deadline = trio.current_time() + self.config.meta_deadline
        in_doubt = False
        hops = 0  # redirects followed at once since the last pause
        while True:
            redirected = False
            for address in self._meta_candidates():
                left = deadline - trio.current_time()
                if left <= 0 and not in_doubt:
                    break
                tried.append(address)
                limit = self.config.meta_attempt
                if not in_doubt:
                    limit = min(limit, left)
                try:
                    result = await self.pool.call(address, method, params, time_limit=limit)
                except NoReply as exc:
                    in_doubt = in_doubt or bool(command)
                    log.warning("metadata node %s did not answer (%s)", address, exc)
                    failed()
                    continue
                except Unavailable as exc:
                    log.warning("metadata node %s unavailable (%s)", address, exc)
                    failed()
                    continue
                except NodeError as exc:
                    if exc.name not in (NOT_LEADER, NOT_META, IN_DOUBT):
                        raise
                    in_doubt = in_doubt or exc.name == IN_DOUBT
                    if not self._follow(exc.detail):
                        await self.refresh_map()  # a leader this client's map lacks
                        self._follow(exc.detail)
                    leader = self._meta_leader
                    if leader not in (None, address) and not self.pool.is_suspect(leader):
                        redirected = True
                        break
                    continue
                self._meta_leader = address
                return result
            if redirected and hops < len(self.map.meta_nodes()):
                hops += 1
                continue  # go straight to the leader it named
            hops = 0
            now = trio.current_time()
            if now >= deadline and not in_doubt:
                break
            if in_doubt and now >= deadline:
                log.warning("metadata command %s: outcome unknown, retrying until it is", command)
                deadline = now + self.config.meta_deadline  # the next warning
            await trio.sleep(delay)
            delay = min(delay * 2, 1.0)
        raise Unavailable("metadata (no meta-group leader answered)", sorted(set(tried)))

    def _follow(self, leader_id: str) -> bool:
        """Remember the leader a member named; whether the map knows it (a member named no
        leader, or one the map lacks: then none is remembered)."""
        self._meta_leader = self.map.address_of(leader_id) if leader_id else None
        return self._meta_leader is not None or not leader_id

    # -- status ------------------------------------------------------------------------------

    async def node_stats(self) -> list[tuple[NodeInfo, dict[str, Any] | None]]:
        """Every node's `node.stats`, or None for nodes that do not answer."""
        return await self.ask_all("node.stats")

    async def node_capacity(self) -> list[tuple[NodeInfo, dict[str, Any] | None]]:
        """Every node's `node.capacity` (cheap: for statfs), or None if it does not answer."""
        return await self.ask_all("node.capacity")

    async def meta_status(self) -> list[tuple[NodeInfo, dict[str, Any] | None]]:
        """The Raft status of each member of the map's meta group (None if it does not
        answer), then of each other member that holds a replica (one the group is adding or
        removing)."""
        wanted = {node.node_id for node in self.map.meta_nodes()}
        answers = await self.ask_all("meta.status", self.map.members())
        return [(n, s) for n, s in answers if n.node_id in wanted] + [
            (n, s) for n, s in answers if n.node_id not in wanted and s is not None
        ]

    async def repair_start(self) -> list[tuple[NodeInfo, dict[str, Any] | None]]:
        """Have every node holding blocks start a repair pass; their repair counters."""
        return await self.ask_all("repair.start", self.map.holders())

    async def repair_status(self) -> list[tuple[NodeInfo, dict[str, Any] | None]]:
        """The repair counters (cheap) of every node holding blocks; None for those silent."""
        return await self.ask_all("repair.status", self.map.holders())

    async def ask_all(
        self, method: str, nodes: Sequence[NodeInfo] | None = None
    ) -> list[tuple[NodeInfo, dict[str, Any] | None]]:
        """Each node's answer to `method` (no parameters) at once: of `nodes`, or of every
        member; None for a node that does not answer."""
        nodes = self.map.members() if nodes is None else nodes
        answers: dict[str, dict[str, Any] | None] = {}

        async def ask(node: NodeInfo) -> None:
            try:
                answer = await self.pool.call(node.address, method, [], time_limit=3.0)
            except (Unavailable, NodeError):
                answer = None
            answers[node.node_id] = answer if isinstance(answer, dict) else None

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(ask, node)
        return [(node, answers[node.node_id]) for node in nodes]


class _ReplicatedWrite:
    """One block on its way to R replicas; `quorum_reached` fires when the outcome is known."""

    def __init__(
        self, cluster: Cluster, block_id: bytes, data: memoryview, checksum: bytes
    ) -> None:
        self.cluster = cluster
        self.block_id = block_id
        self.data = data
        self.checksum = checksum
        cmap = cluster.map
        self.epoch = cmap.epoch  # sent along: a node that knows a newer map answers with it
        self.spares = [node.address for node in cmap.fallbacks(block_id)]
        # A node that failed lately is handed off at once, while a spare is left.
        self.targets = [self._instead_of_suspect(n.address) for n in cmap.placement(block_id)]
        self._suspects = {a for a in self.targets if cluster.pool.is_suspect(a)}
        self.quorum = cmap.write_quorum()
        self.stored: list[str] = []
        self.failed: list[str] = []
        self.errors: list[Exception] = []
        self.quorum_reached = trio.Event()
        self._writing: set[str] = set()
        self._active = len(self.targets)
        self._all_done = trio.Event()

    def _instead_of_suspect(self, address: str) -> str:
        if self.cluster.pool.is_suspect(address) and self.spares:
            return self.spares.pop(0)
        return address

    async def run(self, slot: trio.Semaphore) -> None:
        """Write every replica; once the quorum is known, give the others `replica_grace`, or
        nodes that were suspect already only as long again as the quorum took."""
        started = trio.current_time()
        try:
            async with trio.open_nursery() as nursery:
                for address in self.targets:
                    nursery.start_soon(self._replicate, address, name="block-replica")
                await self.quorum_reached.wait()
                grace = self.cluster.config.replica_grace
                if self._writing <= self._suspects:
                    grace = min(grace, trio.current_time() - started)
                with trio.move_on_after(grace):
                    await self._all_done.wait()
                nursery.cancel_scope.cancel()
            for address in sorted(self._writing):
                log.warning(
                    "node %s: block %s not stored in time; left behind with %d copies",
                    address,
                    self.block_id.hex(),
                    len(self.stored),
                )
                self.cluster.pool.mark_down(address)
        finally:
            self.quorum_reached.set()
            slot.release()

    def _replan(self, refused: str) -> None:
        """After a newer map came: the nodes it places the block on (then the rest of its
        ring) that are not writing it or done, in place of the spares of the older map."""
        cmap = self.cluster.map
        self.epoch = cmap.epoch
        busy = {refused, *self.stored, *self._writing}
        order = [*cmap.placement(self.block_id), *cmap.fallbacks(self.block_id)]
        self.spares = [node.address for node in order if node.address not in busy]

    async def _replicate(self, address: str) -> None:
        pool = self.cluster.pool
        try:
            while True:
                self._writing.add(address)
                try:
                    params = [self.block_id, self.checksum, self.data, self.epoch]
                    await pool.call(address, "block.put", params)
                except (Unavailable, NodeError) as exc:
                    if isinstance(exc, NodeError) and exc.name == NEWER_MAP:
                        # Placed by an older map: the newer one's nodes take it instead.
                        self._writing.discard(address)
                        self.cluster.offered(exc.detail)
                        if self.cluster.map.epoch > self.epoch:  # also if learned meanwhile
                            self._replan(address)
                        if self.spares:
                            address = self.spares.pop(0)
                            continue
                        return
                    log.warning(
                        "node %s: block %s not stored (%s)", address, self.block_id.hex(), exc
                    )
                    self.failed.append(address)
                    self.errors.append(exc)
                    self._writing.discard(address)
                    if self.spares:
                        address = self.spares.pop(0)
                        log.info("handing block %s off to %s", self.block_id.hex(), address)
                        continue
                    return
                self._writing.discard(address)
                self.stored.append(address)
                return
        finally:
            self._active -= 1
            if len(self.stored) >= self.quorum or len(self.stored) + self._active < self.quorum:
                self.quorum_reached.set()
            if self._active == 0:
                self._all_done.set()


@contextlib.asynccontextmanager
async def connected(seeds: tuple[str, ...], client: ClientConfig) -> AsyncIterator[Cluster]:
    """A client of the cluster for a command-line tool (2 s to reach each node), closed with
    its connections when the block ends."""
    config = ClusterConfig(seeds=seeds, client=dataclasses.replace(client, connect_timeout=2.0))
    async with trio.open_nursery() as nursery:
        cluster = await Cluster.create(config, nursery=nursery)
        try:
            yield cluster
        finally:
            await cluster.aclose()
            nursery.cancel_scope.cancel()


async def _fetch_map(pool: NodePool, seeds: Sequence[str]) -> ClusterMap:
    """The map from the first seed that answers; AuthenticationError if a seed refused us."""
    failures: list[Unavailable] = []
    for seed in seeds:
        try:
            return ClusterMap.from_wire(await pool.call(seed, "map.get", []))
        except Unavailable as exc:
            failures.append(exc)
    for failure in failures:
        if isinstance(failure.__cause__, AuthenticationError):
            raise failure.__cause__
    reasons = "; ".join(str(failure) for failure in failures)
    raise Unavailable(f"cluster (no seed answered: {reasons})", list(seeds))


def _maybe_more(page: list[Chunk]) -> bool:
    """Whether a page of a chunk map may be followed by more: it ended at the most chunks or
    about the most tail bytes one answer carries."""
    full = len(page) == commands.CHUNKS_PER_MESSAGE
    return full or sum(len(chunk.tail) for chunk in page) >= commands.TAIL_PAGE_BYTES


def _is_term(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0
