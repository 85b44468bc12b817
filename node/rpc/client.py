"""Client side of the wire protocol on trio: one multiplexed connection per node.

`RpcConnection` wraps a `protocol.Connection`: a reader task feeds it bytes and wakes the caller
whose msgid was answered; callers send under a lock so frames never interleave. `NodePool` keeps
one connection per node address, reconnects lazily and remembers which nodes failed recently so
callers can try healthy replicas first.
"""

from __future__ import annotations

import logging
import math
import socket
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import trio

from ringfs.node.errors import NodeError, NoReply, ProtocolError, Unavailable
from ringfs.node.rpc.protocol import (
    Buffer,
    ClusterIdentity,
    Connection,
    HandshakeDone,
    Limits,
    Response,
    Role,
)
from ringfs.node.rpc.writer import MessageWriter

log = logging.getLogger(__name__)

T = TypeVar("T")
# Told of each request answered: method, error name or None, seconds (for metrics).
Observer = Callable[[str, str | None, float], None]

# How many bytes to ask the kernel for at once: big enough that a 4 MiB block takes few loops.
RECEIVE_SIZE = 1024 * 1024
# TCP keepalive (see `keep_alive`): a dead peer is found about two minutes after it went quiet.
KEEPALIVE_IDLE = 60
KEEPALIVE_INTERVAL = 10
KEEPALIVE_PROBES = 6


@dataclass(frozen=True)
class ClientConfig:
    """How a client talks to nodes: with the cluster secret (`key` empty: as a node, or an
    operator's tool) or with the secret of the client key `key` (as a mount)."""

    secret: bytes
    key: str = ""
    connect_timeout: float = 3.0
    request_timeout: float = 15.0
    ssl_context: ssl.SSLContext | None = None
    limits: Limits = field(default_factory=Limits)
    # The cluster this client belongs to, once known: nodes of another are refused.
    identity: ClusterIdentity = field(default_factory=ClusterIdentity)
    # Told of each call: method, error name or None, seconds (for metrics).
    observe: Observer | None = None


class _Slot:
    """Where the reader task leaves the answer for one waiting caller."""

    __slots__ = ("done", "response", "failure")

    def __init__(self) -> None:
        self.done = trio.Event()
        self.response: Response | None = None
        self.failure: Unavailable | None = None


class RpcConnection:
    """A handshaken, multiplexed connection to one node."""

    def __init__(
        self,
        address: str,
        stream: trio.abc.Stream,
        conn: Connection,
        nursery: trio.Nursery,
        send_time_limit: float,
    ) -> None:
        """`send_time_limit`: for the rest of a message written at once in part."""
        self.address = address
        self.peer_id = conn.peer_id
        self._stream = stream
        self._conn = conn
        self._writer = MessageWriter(
            stream, nursery, f"rpc-writer {address}", send_time_limit, self._cut_off
        )
        self._slots: dict[int, _Slot] = {}
        self._closed = False
        self._last_receive = trio.current_time()

    @classmethod
    async def connect(
        cls, address: str, config: ClientConfig, *, nursery: trio.Nursery
    ) -> RpcConnection:
        """Open, authenticate and start the reader task.

        Raises `Unavailable` if the node cannot be reached in time, `AuthenticationError` if
        either side fails the challenge. Cancellation closes the half-open stream.
        """
        host, port = split_address(address)
        with trio.move_on_after(config.connect_timeout) as scope:
            try:
                tcp = await trio.open_tcp_stream(host, port)
            except OSError as exc:
                raise Unavailable(f"node {address}: {exc.strerror or exc}", [address]) from exc
            keep_alive(tcp)
            stream: trio.abc.Stream = tcp
            try:
                if config.ssl_context is not None:
                    stream = trio.SSLStream(stream, config.ssl_context, server_hostname=host)
                conn = Connection(
                    Role.CLIENT,
                    config.secret,
                    key=config.key,
                    limits=config.limits,
                    identity=config.identity,
                )
                await _handshake(stream, conn)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                await trio.aclose_forcefully(stream)
                reason = _reason(exc)
                raise Unavailable(f"node {address}: handshake failed: {reason}", [address]) from exc
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
        if scope.cancelled_caught:
            raise Unavailable(f"node {address}: connect timed out", [address])
        rpc = cls(address, stream, conn, nursery, config.request_timeout)
        nursery.start_soon(rpc._read_loop, name=f"rpc-reader {address}")
        return rpc

    @property
    def closed(self) -> bool:
        return self._closed

    async def call(self, method: str, params: Sequence[Any], time_limit: float) -> Any:
        """Send one request and wait for its answer.

        Raises `NodeError` for an error reply and `Unavailable` when the connection fails or the
        deadline passes: `NoReply` once the request has gone out, since the node may then have
        acted on it. Cancellation abandons the request; its late answer is dropped.
        """
        if self._closed:
            raise Unavailable(f"node {self.address}: connection closed", [self.address])
        slot = _Slot()
        sent_at = trio.current_time()
        msgid, buffers = self._conn.send_request(method, params)
        self._slots[msgid] = slot
        # Whether any of the request may have gone out: from then on, the node may act on it.
        sent = False

        def failure(what: str) -> Unavailable:
            kind = NoReply if sent else Unavailable
            return kind(f"node {self.address}: {what}", [self.address])

        try:
            # A plain scope, not `fail_after`: on every call, its context manager costs more
            # than writing the request.
            with trio.CancelScope(deadline=sent_at + time_limit) as waiting:
                # At once, in one write, while nothing else is being written; else in turn.
                sent = self._writer.write_now(buffers)
                if not sent:
                    async with self._writer.lock:
                        if not slot.done.is_set():  # else the connection failed meanwhile
                            sent = True
                            await self._write(buffers)
                await slot.done.wait()
            if waiting.cancelled_caught:
                log.warning(
                    "node %s: %s (msgid %d) timed out after %.1fs",
                    self.address,
                    method,
                    msgid,
                    time_limit,
                )
                if self._last_receive < sent_at:
                    # Not a byte since this call went out: the peer or the path is gone, so
                    # every other call on this connection would wait out its deadline too.
                    silent = Unavailable(f"node {self.address}: silent", [self.address])
                    await self._fail_all(silent)
                raise failure(f"{method} timed out")
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await self._fail_all(Unavailable(f"node {self.address}: {exc}", [self.address]))
            raise failure("connection lost") from exc
        finally:
            if self._slots.pop(msgid, None) is not None and not slot.done.is_set():
                self._conn.abandon(msgid)
        if slot.failure is not None:
            # The connection died: after the request went out (in doubt), or before.
            kind = NoReply if sent else Unavailable
            raise kind(slot.failure.what, slot.failure.tried) from slot.failure
        assert slot.response is not None
        if slot.response.error is not None:
            name, detail = slot.response.error
            raise NodeError(name, detail)
        return slot.response.result

    async def notify(self, method: str, batch: Sequence[Sequence[Any]], time_limit: float) -> None:
        """Send one-way calls (msgpack-RPC notifications, never answered), in order, in one
        write.

        Raises `Unavailable` when the connection fails or the time limit passes. Returning
        means the bytes are with the kernel, not that the peer handled them.
        """
        if self._closed:
            raise Unavailable(f"node {self.address}: connection closed", [self.address])
        payload = self._notifications(method, batch)
        try:
            with trio.fail_after(time_limit):
                async with self._writer.lock:
                    await self._write([payload])
        except trio.TooSlowError:
            raise Unavailable(
                f"node {self.address}: {method} not sent in time", [self.address]
            ) from None
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            await self._fail_all(Unavailable(f"node {self.address}: {exc}", [self.address]))
            raise Unavailable(f"node {self.address}: connection lost", [self.address]) from exc

    def notify_now(self, method: str, batch: Sequence[Sequence[Any]]) -> bool:
        """Send one-way calls like `notify`, but in the caller's task and without waiting
        (`MessageWriter.write_now`): the bytes reach the kernel a pass of the scheduler sooner.
        Returns False, having sent nothing, when `notify` must send them instead."""
        if self._closed or not self._writer.free:
            return False  # not encoded for nothing: `notify` encodes them again
        return self._writer.write_now([self._notifications(method, batch)])

    def _notifications(self, method: str, batch: Sequence[Sequence[Any]]) -> bytes:
        return b"".join(
            buffer for params in batch for buffer in self._conn.send_notification(method, params)
        )

    async def _write(self, buffers: Sequence[Buffer]) -> None:
        """Write whole messages (the caller holds the writer's lock)."""
        try:
            await self._writer.write_locked(buffers)
        except BaseException:
            await self._cut_off()
            raise

    async def _cut_off(self) -> None:
        """A write failed: half a message may be on the wire, and nothing after it would
        parse."""
        await self._fail_all(Unavailable(f"node {self.address}: send cut off", [self.address]))

    async def _read_loop(self) -> None:
        failure = Unavailable(f"node {self.address}: closed", [self.address])
        try:
            while True:
                data = await self._stream.receive_some(RECEIVE_SIZE)
                self._last_receive = trio.current_time()
                if not data:
                    failure = Unavailable(
                        f"node {self.address}: connection closed by peer", [self.address]
                    )
                    return
                for event in self._conn.receive_data(data):
                    if isinstance(event, Response):
                        slot = self._slots.get(event.msgid)
                        if slot is not None:
                            slot.response = event
                            slot.done.set()
        except ProtocolError as exc:
            log.error("node %s: protocol error, closing: %s", self.address, exc)
            failure = Unavailable(f"node {self.address}: {exc}", [self.address])
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            failure = Unavailable(f"node {self.address}: {exc}", [self.address])
        finally:
            # Also on cancellation: the socket is closed and every waiting caller woken.
            await self._fail_all(failure)

    async def _fail_all(self, failure: Unavailable) -> None:
        """Mark the connection dead and wake every waiting caller with `failure`."""
        if not self._closed:
            self._closed = True
            await trio.aclose_forcefully(self._stream)
        for slot in self._slots.values():
            if not slot.done.is_set():
                slot.failure = failure
                slot.done.set()

    async def aclose(self) -> None:
        await self._fail_all(Unavailable(f"node {self.address}: closed", [self.address]))


def _reason(exc: BaseException) -> str:
    """What went wrong, with the TLS error a broken stream hides as its cause."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError):
        return f"TLS: {cause.reason or cause}"
    return str(exc) or type(exc).__name__


def keep_alive(stream: trio.SocketStream) -> None:
    """Have TCP probe an idle connection (after `KEEPALIVE_IDLE` s, every `KEEPALIVE_INTERVAL`
    s, `KEEPALIVE_PROBES` times), so a peer that vanished without a word (power lost, cut off)
    is found and its connection closed instead of held for ever."""
    sock = stream.socket
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if hasattr(socket, "TCP_KEEPIDLE"):  # Linux
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)
    except OSError:
        pass  # the peer is gone already: the first read or write says so


async def _handshake(stream: trio.abc.Stream, conn: Connection) -> None:
    """Drive the challenge-response until the connection is open."""
    while True:
        for buffer in conn.data_to_send():
            await stream.send_all(buffer)
        if conn.is_open:
            return
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            raise trio.BrokenResourceError("peer closed the connection during the handshake")
        for event in conn.receive_data(data):
            if isinstance(event, HandshakeDone):
                break


def split_address(address: str) -> tuple[str, int]:
    """ "host:port" -> (host, port); raises ValueError with a readable message."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"not a host:port address: {address!r}")
    return host.strip("[]"), int(port)


#: Calls that move blocks (a 4 MiB `block.put` or answer to `block.get`, a 1 MiB part of a
#: snapshot image): they go to each node on a connection of their own, its *bulk* lane. On
#: one shared connection, a transfer holds the send lock while the kernel takes its megabytes
#: and fills the socket ahead of everything after it, on both sides: a lookup, a commit or a
#: Raft message would wait behind it.
BULK_METHODS = frozenset({"block.put", "block.get", "raft.snapshot_part"})


class NodePool:
    """Up to two connections per node address, opened on first use and re-opened after
    failure: one for `BULK_METHODS`, one for every other call and the notifications.

    Tracks recent failures per node so callers can order replicas healthy-first; a failed node
    is retried after a back-off that doubles up to `MAX_BACKOFF`.
    """

    INITIAL_BACKOFF = 0.5
    MAX_BACKOFF = 8.0

    def __init__(self, config: ClientConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self._nursery = nursery
        # By (address, bulk lane or not).
        self._connections: dict[tuple[str, bool], RpcConnection] = {}
        self._connecting: dict[tuple[str, bool], trio.Event] = {}
        self._down_until: dict[str, float] = {}
        self._backoff: dict[str, float] = {}

    def is_suspect(self, address: str) -> bool:
        """True while a node is inside its back-off window after a failure."""
        return self._down_until.get(address, -math.inf) > trio.current_time()

    def order(self, addresses: Sequence[str]) -> list[str]:
        """The same addresses, healthy ones first, keeping ring order within each group."""
        return sorted(addresses, key=self.is_suspect)

    def mark_down(self, address: str) -> None:
        """Note a failure of `address`: it is suspect for a back-off that doubles each time."""
        backoff = min(self._backoff.get(address, self.INITIAL_BACKOFF / 2) * 2, self.MAX_BACKOFF)
        self._backoff[address] = backoff
        self._down_until[address] = trio.current_time() + backoff

    def _mark_up(self, address: str) -> None:
        self._backoff.pop(address, None)
        self._down_until.pop(address, None)

    async def connection(self, address: str, bulk: bool = False) -> RpcConnection:
        """The open connection to `address` (its bulk lane's if `bulk`), connecting (once,
        shared) if needed."""
        lane = (address, bulk)
        while True:
            rpc = self._connections.get(lane)
            if rpc is not None and not rpc.closed:
                return rpc
            pending = self._connecting.get(lane)
            if pending is None:
                break
            await pending.wait()
        done = self._connecting[lane] = trio.Event()
        try:
            rpc = await RpcConnection.connect(address, self.config, nursery=self._nursery)
            self._connections[lane] = rpc
            return rpc
        finally:
            del self._connecting[lane]
            done.set()

    async def call(
        self, address: str, method: str, params: Sequence[Any], time_limit: float | None = None
    ) -> Any:
        """Call `method` on the node at `address`; failures mark the node suspect."""
        limit = time_limit or self.config.request_timeout
        bulk = method in BULK_METHODS

        def attempt(rpc: RpcConnection) -> Awaitable[Any]:
            return rpc.call(method, params, limit)

        observe = self.config.observe
        if observe is None:
            return await self._through(address, attempt, bulk)
        started = trio.current_time()
        error: str | None = None
        try:
            return await self._through(address, attempt, bulk)
        except NodeError as exc:
            error = exc.name
            raise
        except Unavailable:
            error = "unavailable"
            raise
        finally:
            observe(method, error, trio.current_time() - started)

    async def notify(
        self, address: str, method: str, batch: Sequence[Sequence[Any]], time_limit: float
    ) -> None:
        """Send one-way calls of `method` to the node at `address` (see `RpcConnection.notify`);
        failures mark the node suspect."""
        await self._through(address, lambda rpc: rpc.notify(method, batch, time_limit))

    def notify_now(self, address: str, method: str, batch: Sequence[Sequence[Any]]) -> bool:
        """`RpcConnection.notify_now` on the open connection to `address`; False, sending
        nothing, when there is none."""
        rpc = self._connections.get((address, False))
        return rpc is not None and rpc.notify_now(method, batch)

    async def _through(
        self, address: str, action: Callable[[RpcConnection], Awaitable[T]], bulk: bool = False
    ) -> T:
        """Run `action` on a connection to `address` (its bulk lane's if `bulk`), keeping the
        node's health record."""
        try:
            result = await action(await self.connection(address, bulk))
        except Unavailable:
            self.mark_down(address)
            raise
        except ProtocolError as exc:
            # A node that breaks the protocol (or fails the handshake: another version, a
            # wrong secret, not a ringfs node) is as unusable as an unreachable one.
            self.mark_down(address)
            raise Unavailable(f"node {address}: {exc}", [address]) from exc
        self._mark_up(address)
        return result

    async def aclose(self) -> None:
        for rpc in list(self._connections.values()):
            await rpc.aclose()
        self._connections.clear()
