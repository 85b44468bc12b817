"""What a storage node answers: the RPC methods, their parameter checks, and their errors.

The methods are listed in `docs/protocol.md`. Every parameter comes off the network, so each
handler checks types and arity and answers EINVAL for anything else; block ids are validated by
the store, so no request can name a path outside it. Peers with the cluster secret (nodes and
operators' tools) may call every method; clients with a key only what a mount needs
(`CLIENT_METHODS`, `CLIENT_COMMANDS`, `CLIENT_QUERIES`), and are answered EPERM for the rest.
Block reads and writes run in worker threads; the metadata is applied and queried on the event
loop (see `ringfs.node.raft.shell`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from ringfs.node.agreement import MapKeeper
from ringfs.node.blocks.space import Capacity
from ringfs.node.blocks.store import BlockStore, validate_block_id
from ringfs.node.cluster.map import PLACED, MapView
from ringfs.node.cluster.paxos import InDoubt
from ringfs.node.errors import CORRUPT, NEWER_MAP, NOT_META, NodeError, Unavailable
from ringfs.node.meta import commands as cmd
from ringfs.node.meta.client_ids import minted_with
from ringfs.node.meta.commands import (
    Command,
    Query,
    command_from_wire,
    encode_result,
    query_from_wire,
)
from ringfs.node.meta.replica import ReplicatedMeta
from ringfs.node.raft.core import SnapshotRequest, message_from_wire
from ringfs.node.register import NodeRegister
from ringfs.node.repairer import Repairer
from ringfs.node.rpc.intake import Intake
from ringfs.node.rpc.protocol import PROTOCOL_VERSION, is_natural
from ringfs.node.scrubber import Scrubber
from ringfs.node.seat import MetaSeat
from ringfs.node.telemetry import NodeMetrics

log = logging.getLogger(__name__)

Method = Callable[[list[Any]], Awaitable[Any]]

#: What a client key may call: what a mount needs to read and write files.
CLIENT_METHODS = frozenset(
    {"node.info", "node.capacity", "map.get", "block.put", "block.get"}
    | {"meta.apply", "meta.query", "meta.read_chunks", "meta.changes"}
)
#: Where a metadata call of a session names its client id (its index in the params).
SESSION_CALLS = {"meta.apply": 0, "meta.read_chunks": 0, "meta.changes": 1}
#: The metadata commands and queries of a client key: all but the nodes' own upkeep (the
#: first command, abandoned uploads, expired sessions, collected garbage, repair's listings).
CLIENT_COMMANDS = frozenset(
    c.OP
    for c in (cmd.Mknod, cmd.Mkdir, cmd.Symlink, cmd.Link, cmd.Unlink, cmd.Rmdir, cmd.Rename)
    + (cmd.Setattr, cmd.CommitChunks, cmd.SetXattr, cmd.RemoveXattr, cmd.Purge, cmd.Reserve)
    + (cmd.OpenSession, cmd.Delegate, cmd.Release, cmd.Batch)
)
CLIENT_QUERIES = frozenset(
    c.OP
    for c in (cmd.Lookup, cmd.GetAttr, cmd.ReadDir, cmd.ReadLink, cmd.GetXattr, cmd.ListXattr)
    + (cmd.ReadChunks, cmd.FsInfo)
)


def _check_session(method: str, params: list[Any], key_secret: bytes) -> None:
    """A key holder acts only in the sessions of ids its key minted (`client_ids`): EPERM for
    another's. Params of the wrong shape are left to the method to refuse (EINVAL)."""
    at = SESSION_CALLS.get(method)
    if at is None or not isinstance(params, list) or len(params) <= at:
        return
    client_id = params[at]
    if isinstance(client_id, bytes) and not minted_with(key_secret, client_id):
        raise NodeError("EPERM", f"{method}: client id {client_id[:16].hex()} is not of this key")


def _arity(params: list[Any], count: int, method: str, most: int | None = None) -> list[Any]:
    """`params`, if there are `count` of them (up to `most` if given)."""
    most = count if most is None else most
    if not count <= len(params) <= most:
        takes = f"{count}" if most == count else f"{count} to {most}"
        raise NodeError("EINVAL", f"{method} takes {takes} parameters, got {len(params)}")
    return params


def _span(params: list[Any]) -> tuple[int, int] | None:
    """The (offset, length) of the bytes `block.get` asks for, None for the whole block."""
    if not params:
        return None
    if len(params) != 2 or not all(is_natural(value) for value in params):
        raise NodeError("EINVAL", "block.get takes an offset and a length, natural numbers")
    return params[0], params[1]


def _bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, bytes):
        raise NodeError("EINVAL", f"{what} must be binary")
    return value


# Sequence numbers are stored as SQLite integers: signed 64 bits.
_MAX_SEQ = 2**63 - 1


def _seq(value: Any, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_SEQ:
        raise NodeError("EINVAL", f"{what} must be an integer from 0 to 2**63-1")
    return value


def _optional_seq(value: Any, what: str) -> int | None:
    return None if value is None else _seq(value, what)


def _capacity(space: Capacity) -> dict[str, int]:
    return {"capacity": space.capacity, "free": space.free, "reserve": space.reserve}


class NodeService:
    """Dispatches RPC methods to the block store and (on the metadata node) the metadata."""

    def __init__(
        self,
        node_id: str,
        view: MapView,
        store: BlockStore,
        repairer: Repairer,
        scrubber: Scrubber,
        register: NodeRegister,
        keeper: MapKeeper,
        seat: MetaSeat,
    ) -> None:
        self.node_id = node_id
        self.view = view
        self.store = store
        self.repairer = repairer
        self.scrubber = scrubber
        self.keeper = keeper
        self.seat = seat
        #: What the node's connections hold of received messages (the server shares it).
        self.intake = Intake()
        # Disk writes at once: more only queue in the kernel and stretch every fsync.
        self._disk = trio.CapacityLimiter(4)
        # Blocks served to `block.get` since the node started: how reads spread over nodes.
        self.reads = 0
        self._methods: dict[str, Method] = {
            "node.info": self.node_info,
            "node.stats": self.node_stats,
            "node.capacity": self.node_capacity,
            "map.get": self.map_get,
            "map.change": self.map_change,
            "block.put": self.block_put,
            "block.get": self.block_get,
            "block.verify": self.block_verify,
            "block.delete": self.block_delete,
            "repair.start": self.repair_start,
            "repair.status": self.repair_status,
            "meta.apply": self.meta_apply,
            "meta.query": self.meta_query,
            "meta.read_chunks": self.meta_read_chunks,
            "meta.status": self.meta_status,
            "meta.changes": self.meta_changes,
            "raft.snapshot_part": self.raft_snapshot_part,
            "paxos.prepare": register.paxos_prepare,
            "paxos.accept": register.paxos_accept,
        }
        self._notifications: dict[str, Callable[[list[Any]], None]] = {
            "raft.message": self.raft_message,
        }
        self.metrics = NodeMetrics(self._methods, self.stats)

    async def handle(self, method: str, params: list[Any]) -> Any:
        """Run one request of a peer with the cluster secret; raises `NodeError` (ENOSYS for
        an unknown method)."""
        handler = self._methods.get(method)
        if handler is None:
            raise NodeError("ENOSYS", f"unknown method {method[:64]!r}")
        return await handler(params)

    async def handle_client(self, method: str, params: list[Any], key_secret: bytes) -> Any:
        """Run one request of a client with the key of secret `key_secret`; raises
        `NodeError`, EPERM for what only nodes may do and for another key's session."""
        if method not in CLIENT_METHODS and method in self._methods:
            raise NodeError("EPERM", f"{method} is for nodes: a client key may not call it")
        _check_session(method, params, key_secret)
        if method == "meta.apply":
            return await self._meta_apply(params, _client_command)
        if method == "meta.query":
            return await self._meta_query(params, _client_query)
        return await self.handle(method, params)

    def notified(self, method: str, params: list[Any]) -> None:
        """Take one notification (a one-way call); raises `NodeError` to have it refused."""
        handler = self._notifications.get(method)
        if handler is None:
            raise NodeError("ENOSYS", f"unknown notification {method[:64]!r}")
        handler(params)

    async def node_info(self, params: list[Any]) -> dict[str, Any]:
        """Who this node is and the map epoch it goes by; given the caller's epoch (optional),
        a node behind reads the register at once."""
        self._placed_before(_arity(params, 0, "node.info", most=1))
        return {
            "node_id": self.node_id,
            "protocol": PROTOCOL_VERSION,
            "epoch": self.view.current.epoch,
        }

    async def node_stats(self, params: list[Any]) -> dict[str, Any]:
        _arity(params, 0, "node.stats")
        return self.stats()

    def stats(self) -> dict[str, Any]:
        """The node's counters (cheap: nothing is walked), for `node.stats` and metrics."""
        stats = self.store.stats()
        meta, collector = self.seat.replica, self.seat.collector
        return {
            "node_id": self.node_id,
            "epoch": self.view.current.epoch,
            "blocks": stats.blocks,
            "bytes": stats.bytes,
            "counted": stats.counted,
            **_capacity(stats.space),
            "meta": meta is not None,
            "meta_stats": meta.stats() if meta is not None else None,
            "gc": collector.stats() if collector is not None else None,
            "intake": self.intake.stats(),
            "repair": self.repairer.stats(),
            "scrub": self.scrubber.stats(),
            "reads": self.reads,
        }

    async def node_capacity(self, params: list[Any]) -> dict[str, Any]:
        _arity(params, 0, "node.capacity")
        return _capacity(await trio.to_thread.run_sync(self.store.capacity))

    async def map_get(self, params: list[Any]) -> dict[str, Any]:
        _arity(params, 0, "map.get")
        return self.view.current.to_wire()

    async def map_change(self, params: list[Any]) -> dict[str, Any]:
        operation, arguments = _arity(params, 2, "map.change")
        if not isinstance(operation, str) or not isinstance(arguments, list):
            raise NodeError("EINVAL", "map.change takes [operation, [argument...]]")
        try:
            return (await self.keeper.change(operation, arguments)).to_wire()
        except ValueError as exc:
            raise NodeError("EINVAL", str(exc)) from None
        except (Unavailable, InDoubt) as exc:  # no majority of the register's acceptors
            raise NodeError("EAGAIN", str(exc)) from None

    async def block_put(self, params: list[Any]) -> None:
        block_id, checksum, data, *rest = _arity(params, 3, "block.put", most=4)
        block_id = validate_block_id(block_id)
        checksum = _bytes(checksum, "checksum")
        data = _bytes(data, "data")
        if self._placed_before(rest) and self.view.current.node(self.node_id).state not in PLACED:
            # A writer that does not know this node takes no blocks any more (it is drained):
            # its copy here could be the one to go when this node leaves.
            raise self._newer_map()
        async with self._disk:
            await trio.to_thread.run_sync(self.store.put, block_id, data, checksum)
        self.metrics.wrote(len(data))

    async def block_get(self, params: list[Any]) -> list[bytes]:
        """A block and its checksum; given an offset and a length after the epoch, only those
        bytes of it (fewer past its end), from a block verified whole now or a moment ago."""
        block_id, *rest = _arity(params, 1, "block.get", most=4)
        span = _span(rest[1:])
        older = self._placed_before(rest[:1])
        try:
            data, checksum = await self._read(validate_block_id(block_id), span)
        except NodeError as exc:
            if exc.name == "ENOENT" and older:
                raise self._newer_map() from None  # the block may have moved
            raise
        self.reads += 1
        self.metrics.read(len(data))
        return [data, checksum]

    def _placed_before(self, rest: list[Any]) -> bool:
        """Whether the caller placed by an older map than this node's (the epoch block.put and
        block.get may carry, first in `rest`); one that knows a newer map has this node read
        the register at once."""
        if not rest:
            return False
        epoch = rest[0]
        if not is_natural(epoch):
            raise NodeError("EINVAL", "the map epoch must be a natural number")
        self.keeper.heard_of(epoch)
        return epoch < self.view.current.epoch

    def _newer_map(self) -> NodeError:
        return NodeError(NEWER_MAP, json.dumps(self.view.current.to_wire()))

    async def block_verify(self, params: list[Any]) -> bytes:
        (block_id,) = _arity(params, 1, "block.verify")
        _, checksum = await self._read(validate_block_id(block_id))
        return checksum

    async def _read(
        self, block_id: bytes, span: tuple[int, int] | None = None
    ) -> tuple[bytes, bytes]:
        """A stored block, or the `span` (offset, length) of it, verified (see
        `BlockStore.get_span`). A copy that fails is quarantined by the store, and a repair
        pass is asked for, which stores a good one again from another node."""
        try:
            async with self._disk:
                if span is None:
                    return await trio.to_thread.run_sync(self.store.get, block_id)
                return await trio.to_thread.run_sync(self.store.get_span, block_id, *span)
        except NodeError as exc:
            if exc.name == CORRUPT:
                self.repairer.ask()
            raise

    async def block_delete(self, params: list[Any]) -> bool:
        (block_id,) = _arity(params, 1, "block.delete")
        block_id = validate_block_id(block_id)
        return await trio.to_thread.run_sync(self.store.delete, block_id)

    async def repair_start(self, params: list[Any]) -> dict[str, Any]:
        _arity(params, 0, "repair.start")
        self.repairer.ask()
        return self.repairer.stats()

    async def repair_status(self, params: list[Any]) -> dict[str, Any]:
        _arity(params, 0, "repair.status")
        return self.repairer.stats()

    def _meta(self) -> ReplicatedMeta:
        meta = self.seat.replica
        if meta is None:
            holder = self.view.current.meta_nodes()[0].node_id
            raise NodeError(NOT_META, holder)
        return meta

    async def meta_apply(self, params: list[Any]) -> Any:
        return await self._meta_apply(params, command_from_wire)

    async def _meta_apply(self, params: list[Any], decode: Callable[[Any], Command]) -> Any:
        client_id, seq, acked_below, command = _arity(params, 4, "meta.apply")
        meta = self._meta()
        outcome, attrs, term = await meta.apply(
            decode(command),
            _bytes(client_id, "client id"),
            _optional_seq(seq, "seq"),
            _optional_seq(acked_below, "acked_below"),
        )
        if outcome.error is not None:
            raise NodeError(outcome.error)
        return [outcome.result, [attr.to_wire() for attr in attrs], term]

    async def meta_query(self, params: list[Any]) -> Any:
        return await self._meta_query(params, query_from_wire)

    async def _meta_query(self, params: list[Any], decode: Callable[[Any], Query]) -> Any:
        (query,) = _arity(params, 1, "meta.query")
        return encode_result(await self._meta().query(decode(query)))

    async def meta_read_chunks(self, params: list[Any]) -> list[Any]:
        """A `ReadChunks` page, the caller registered as watching the file: [answer, term]."""
        client_id, wire = _arity(params, 2, "meta.read_chunks")
        query = query_from_wire(wire)
        if not isinstance(query, cmd.ReadChunks):
            raise NodeError("EINVAL", f"meta.read_chunks takes read_chunks, not {query.OP}")
        answer, term = await self._meta().read_chunks(query, _bytes(client_id, "client id"))
        return [answer, term]

    async def meta_changes(self, params: list[Any]) -> list[Any]:
        since, client_id = _arity(params, 2, "meta.changes")
        meta = self._meta()
        changes = await meta.changes(_seq(since, "since"), _bytes(client_id, "client id"))
        return changes.to_wire()

    async def meta_status(self, params: list[Any]) -> dict[str, Any]:
        _arity(params, 0, "meta.status")
        return self._meta().stats()

    def raft_message(self, params: list[Any]) -> None:
        (wire,) = _arity(params, 1, "raft.message")
        try:
            message = message_from_wire(wire)
        except ValueError as exc:
            raise NodeError("EINVAL", f"bad raft message: {exc}") from None
        if message.dst != self.node_id:
            raise NodeError("EINVAL", f"raft message for {message.dst[:64]!r}")
        meta = self._meta()
        image = meta.images.take(message) if isinstance(message, SnapshotRequest) else None
        meta.raft.deliver(message, image)

    async def raft_snapshot_part(self, params: list[Any]) -> None:
        src, term, last_index, size, offset, data = _arity(params, 6, "raft.snapshot_part")
        term, last_index = _seq(term, "term"), _seq(last_index, "last index")
        size, offset = _seq(size, "size"), _seq(offset, "offset")
        data = _bytes(data, "snapshot part")
        meta = self._meta()
        if src not in self.view.current.acceptors() or src == self.node_id:
            raise NodeError("EINVAL", "snapshot part from a node outside the cluster")
        await meta.images.add_part(src, term, last_index, size, offset, data)


def _client_command(wire: Any) -> Command:
    """A command a client key may apply (each command of a batch too); EPERM for others."""
    command = command_from_wire(wire)
    _check_client_command(command)
    return command


def _check_client_command(command: Command) -> None:
    if command.OP not in CLIENT_COMMANDS:
        raise NodeError("EPERM", f"{command.OP} is for nodes: a client key may not apply it")
    if isinstance(command, cmd.Batch):
        for each in command.commands:
            _check_client_command(each)


def _client_query(wire: Any) -> Query:
    """A query a client key may make; EPERM for others."""
    query = query_from_wire(wire)
    if query.OP not in CLIENT_QUERIES:
        raise NodeError("EPERM", f"{query.OP} is for nodes: a client key may not ask it")
    return query
