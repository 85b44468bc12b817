"""Server side of the wire protocol on trio: accept, authenticate, dispatch, answer.

Each connection is handshaken first (nothing is served before the peer proved it holds the
cluster secret or a client key; until then it counts in a budget of its own,
`ringfs.node.rpc.admission`), then every request runs as its own task so a slow block write
never holds up a metadata call on the same connection. A peer with the cluster secret is served
by the handler for nodes, one with a client key by the handler for clients, and is cut off as
soon as its key is revoked (`recheck_keys`). At most `Limits.max_in_flight` requests run per
connection, and large messages share a node-wide budget (`ringfs.node.rpc.intake`): beyond
either, the server simply stops reading, and TCP pushes back on the client.
A protocol violation closes that one connection with a logged reason.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ringfs.node.errors import AuthenticationError, NodeError, ProtocolError
from ringfs.node.rpc.admission import Admission
from ringfs.node.rpc.client import RECEIVE_SIZE, Observer, keep_alive
from ringfs.node.rpc.intake import UNCHARGED_PARTIAL, Intake
from ringfs.node.rpc.protocol import (
    ClusterIdentity,
    Connection,
    KeyLookup,
    Limits,
    Notification,
    Request,
    Role,
)
from ringfs.node.rpc.writer import MessageWriter

log = logging.getLogger(__name__)

Handler = Callable[[str, list[Any]], Awaitable[Any]]
# Handles a request of a client: method, params, and the secret of the key it connected with.
ClientHandler = Callable[[str, list[Any], bytes], Awaitable[Any]]
# Handles a notification (a one-way call) on the connection's reading task: it must not block.
NotificationHandler = Callable[[str, list[Any]], None]


@dataclass(frozen=True)
class ServerConfig:
    secret: bytes
    node_id: str
    host: str = "127.0.0.1"
    port: int = 0
    handshake_timeout: float = 5.0
    # Seconds a started message may take to arrive completely.
    frame_timeout: float = 60.0
    # Seconds an authenticated connection may sit with no request running and nothing
    # arriving before it is closed (its slot freed); a client opens a new one when it needs it.
    idle_timeout: float = 600.0
    # Authenticated connections; those still in their handshake have a budget of their own
    # (see `ringfs.node.rpc.admission`).
    max_connections: int = 256
    max_pending: int = 64
    max_pending_per_address: int = 8
    ssl_context: ssl.SSLContext | None = None
    limits: Limits = field(default_factory=Limits)
    # The cluster this node belongs to, once known: clients of another are refused.
    identity: ClusterIdentity = field(default_factory=ClusterIdentity)
    # The client keys in force (None: only peers with the cluster secret are served).
    keys: KeyLookup | None = None


class RpcServer:
    """Serves `handler(method, params)` to peers with the cluster secret, and
    `client_handler(method, params, key_secret)` to those with a client key
    (`ServerConfig.keys`)."""

    def __init__(
        self,
        config: ServerConfig,
        handler: Handler,
        notified: NotificationHandler | None = None,
        intake: Intake | None = None,
        observe: Observer | None = None,
        client_handler: ClientHandler | None = None,
    ) -> None:
        """`notified` takes the notifications of peers with the cluster secret (a client's
        close its connection). `intake`: what the connections may hold of received messages
        (see `ringfs.node.rpc.intake`); by default a budget of this server's own. `observe` is
        told of each request answered: its method, error name (None) and seconds taken."""
        if (config.keys is None) != (client_handler is None):
            raise ValueError("client keys and a handler for clients go together")
        self.config = config
        self._handler = handler
        self._client_handler = client_handler
        self._notified = notified
        # The connections of clients, by the key each proved it holds.
        self._keyed: dict[_Session, str] = {}
        self.observe = observe
        self.intake = intake or Intake()
        if self.intake.budget.capacity < config.limits.max_frame:
            raise ValueError("the intake budget must hold at least one whole message")
        self._connection_slots = trio.Semaphore(config.max_connections)
        self._admission = Admission(config.max_pending, config.max_pending_per_address)
        # When each address last had a pending connection closed for a newer one (logged
        # once a minute per address: a flood must not flood the log too).
        self._evictions_logged: dict[str, float] = {}

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen and serve until cancelled; reports the bound port through `task_status`.

        Raises OSError if the address cannot be bound (port in use).
        """
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        port = listeners[0].socket.getsockname()[1]
        log.info("node %s listening on %s:%d", self.config.node_id, self.config.host, port)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._handle_stream, listeners)
            task_status.started(port)

    async def _handle_stream(self, stream: trio.SocketStream) -> None:
        peer = _peer_name(stream)
        if self._connection_slots.value == 0:
            # Only peers that authenticated hold those slots: refused before any handshake.
            self._refuse(peer)
            await trio.aclose_forcefully(stream)
            return
        keep_alive(stream)
        wrapped: trio.abc.Stream = stream
        if self.config.ssl_context is not None:
            wrapped = trio.SSLStream(stream, self.config.ssl_context, server_side=True)
        session = _Session(self, wrapped, peer)
        for evicted in self._admission.arrive(session, peer.rpartition(":")[0]):
            assert isinstance(evicted, _Session)
            self._evicted(evicted)
        try:
            await session.run()
        except Exception:
            # The edge of the node: a bug met by one connection ends that connection,
            # loudly, and not the node with every other client.
            log.exception("connection from %s failed", peer)
        finally:
            self._admission.leave(session)
            await trio.aclose_forcefully(wrapped)

    def _evicted(self, session: _Session) -> None:
        """Close a connection still in its handshake to make room for a newer one."""
        session.pending.cancel()
        address, now = session.peer.rpartition(":")[0], trio.current_time()
        if now - self._evictions_logged.get(address, -math.inf) >= 60:
            if len(self._evictions_logged) > 1024:  # many addresses: forget the quiet ones
                self._evictions_logged = {
                    a: t for a, t in self._evictions_logged.items() if now - t < 60
                }
            self._evictions_logged[address] = now
            log.warning(
                "closing connections from %s that have not authenticated, to let newer ones "
                "in (%d pending at most, %d from one address); logged once a minute",
                address,
                self.config.max_pending,
                self.config.max_pending_per_address,
            )

    def authenticated(self, session: _Session) -> bool:
        """Move a connection that just authenticated into the budget of those that did;
        False (and a warning) if that one is full."""
        self._admission.leave(session)
        try:
            self._connection_slots.acquire_nowait()
        except trio.WouldBlock:
            self._refuse(session.peer)  # the last slots went during its handshake
            return False
        return True

    def _refuse(self, peer: str) -> None:
        log.warning(
            "refusing connection from %s: %d connections open", peer, self.config.max_connections
        )

    def closed(self, session: _Session) -> None:
        """An authenticated connection ended: its slot is free."""
        self._keyed.pop(session, None)
        self._connection_slots.release()

    def handler_for(self, session: _Session) -> Handler | None:
        """What serves an authenticated connection: the client handler if it holds a key;
        None if that key was revoked while it shook hands."""
        key = session.conn.key
        if not key:
            return self._handler
        if not self._in_force(key, session):
            log.warning("connection from %s refused: its key %s was revoked", session.peer, key)
            return None
        self._keyed[session] = key
        client_handler, key_secret = self._client_handler, session.conn.secret
        assert client_handler is not None  # keys go with a client handler

        async def serve_client(method: str, params: list[Any]) -> Any:
            return await client_handler(method, params, key_secret)

        return serve_client

    def recheck_keys(self) -> None:
        """Close the connections of clients whose key is no longer in force (revoked, or
        issued again with another secret); call it when the keys may have changed."""
        revoked = [s for s, key in self._keyed.items() if not self._in_force(key, s)]
        for session in revoked:
            log.warning("closing connection from %s: its key %s was revoked", session.peer,
                        self._keyed.pop(session))  # fmt: skip
            session.cut_off()

    def _in_force(self, key: str, session: _Session) -> bool:
        keys = self.config.keys
        return keys is not None and keys(key) == session.conn.secret


class _Session:
    """One authenticated connection: read loop plus one task per request."""

    def __init__(self, server: RpcServer, stream: trio.abc.Stream, peer: str) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        config = server.config
        self.conn = Connection(
            Role.SERVER,
            config.secret,
            keys=config.keys,
            node_id=config.node_id,
            limits=config.limits,
            identity=config.identity,
        )
        # What serves its requests, once it authenticated (see `RpcServer.handler_for`).
        self.handler: Handler = _unauthenticated
        # Writes the answers; made with the requests' nursery, before the first is served.
        self.writer: MessageWriter | None = None
        self.room = trio.Semaphore(config.limits.max_in_flight)
        # Requests that arrived in the same read as the end of the handshake.
        self.early: list[Request] = []
        # The handshake's scope: cancelled when a newer connection takes its place.
        self.pending = trio.CancelScope()
        # The wait for the next bytes: its deadline is the idle timeout while nothing runs,
        # and `finish_by` while a message is under way.
        self.idle = trio.CancelScope()
        self.finish_by = math.inf
        # Serving the authenticated connection: cancelled when its key is revoked.
        self.serving = trio.CancelScope()

    def cut_off(self) -> None:
        """End the connection, and the requests it has running."""
        self.serving.cancel()

    async def _cut_off(self) -> None:
        """The rest of an answer could not be written (the peer went away, or read nothing for
        the frame timeout): nothing after it would parse."""
        log.info("closing connection from %s: the rest of an answer could not be written",
                 self.peer)  # fmt: skip
        self.cut_off()

    async def run(self) -> None:
        try:
            with self.pending, trio.fail_after(self.server.config.handshake_timeout):
                while not self.conn.is_open:
                    if not await self._receive():
                        return
            if self.pending.cancelled_caught:
                log.debug("closed connection from %s in its handshake", self.peer)
                return
            if not self.server.authenticated(self):
                return
            try:
                handler = self.server.handler_for(self)
                if handler is None:
                    return
                self.handler = handler
                with self.serving:
                    async with trio.open_nursery() as nursery:
                        self.writer = MessageWriter(
                            self.stream,
                            nursery,
                            f"rpc-answer {self.peer}",
                            self.server.config.frame_timeout,
                            self._cut_off,
                        )
                        # Errors are caught inside the nursery: a bad peer ends its own
                        # connection (and the requests it has running), never the node.
                        await self._serve_requests(nursery)
                        nursery.cancel_scope.cancel()
            finally:
                self.server.closed(self)
        except AuthenticationError as exc:
            log.warning("connection from %s refused: %s", self.peer, exc)
            await self._flush_handshake()
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", self.peer, exc)
        except trio.TooSlowError:
            log.warning("closing connection from %s: no handshake in time", self.peer)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            if isinstance(exc.__cause__, ssl.SSLError):
                reason = exc.__cause__.reason or exc.__cause__
                log.warning("connection from %s refused: TLS: %s", self.peer, reason)
            else:
                log.debug("connection from %s dropped", self.peer)

    async def _serve_requests(self, nursery: trio.Nursery) -> None:
        frame_timeout = self.server.config.frame_timeout
        frame_started, frame = math.inf, None
        tokens = self.server.intake.big_frames
        token = False  # holds one of the node's tokens for a large unfinished message
        try:
            for request in self.early:
                await self._start(request, nursery)
            self.early.clear()
            while True:
                if not token and self.conn.buffered >= UNCHARGED_PARTIAL:
                    await tokens.acquire()
                    token = True
                    if frame_started < math.inf:
                        frame_started = trio.current_time()  # the wait was not the peer's
                room = RECEIVE_SIZE if token else UNCHARGED_PARTIAL - self.conn.buffered
                # A message that has started must finish in time: a peer cannot park a
                # half-sent frame in our buffer forever, however slowly it trickles in. One
                # scope for both deadlines: a scope costs more than the read it guards.
                self.finish_by = frame_started + frame_timeout
                with trio.CancelScope(deadline=self._wait_until()) as self.idle:
                    data = await self.stream.receive_some(room)
                if self.idle.cancelled_caught:
                    if trio.current_time() >= self.finish_by:
                        raise trio.TooSlowError
                    log.info("closing connection from %s: idle for %.0f s", self.peer,
                             self.server.config.idle_timeout)  # fmt: skip
                    return
                if not data:
                    return
                await self._dispatch(data, nursery)
                if token and self.conn.buffered < UNCHARGED_PARTIAL:
                    tokens.release()  # its message is complete and charged
                    token = False
                if self.conn.partial_frame is None:
                    frame_started, frame = math.inf, None
                elif self.conn.partial_frame != frame:
                    frame_started, frame = trio.current_time(), self.conn.partial_frame
        except ProtocolError as exc:
            log.warning("closing connection from %s: %s", self.peer, exc)
        except trio.TooSlowError:
            log.warning(
                "closing connection from %s: message unfinished after %.0fs",
                self.peer,
                frame_timeout,
            )
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("connection from %s dropped", self.peer)
        finally:
            if token:
                tokens.release()

    def _wait_until(self) -> float:
        """When to stop waiting for the next bytes: when the message under way must be
        complete (`finish_by`), or `idle_timeout` from now if no request runs and no message
        is under way (a running request answers)."""
        config = self.server.config
        if self.room.value < config.limits.max_in_flight or self.conn.buffered:
            return self.finish_by
        return min(self.finish_by, trio.current_time() + config.idle_timeout)

    async def _flush_handshake(self) -> None:
        """Best effort: tell a refused peer why before closing."""
        with (
            trio.move_on_after(1),
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await self._flush_handshake_bytes()

    async def _receive(self) -> bool:
        """Read once during the handshake and answer; False when the peer closed."""
        data = await self.stream.receive_some(RECEIVE_SIZE)
        if not data:
            return False
        await self._dispatch(data, None)
        return True

    async def _dispatch(self, data: bytes | bytearray, nursery: trio.Nursery | None) -> None:
        """Feed received bytes to the protocol and start a task per complete request.

        Waits for a free request slot when `max_in_flight` requests are running: the
        back-pressure that stops a client from flooding the node.
        """
        events = self.conn.receive_data(data)
        await self._flush_handshake_bytes()
        for event in events:
            if isinstance(event, Request):
                if nursery is None:
                    self.early.append(event)  # pipelined right behind the handshake
                else:
                    await self._start(event, nursery)
            elif isinstance(event, Notification):
                self._notified(event)

    def _notified(self, notification: Notification) -> None:
        """Hand a notification to the server's handler, in arrival order. Nobody waits for an
        answer, so a refusal is only logged."""
        if self.conn.key:
            raise ProtocolError(f"a client sent notification {notification.method[:64]!r}")
        handler = self.server._notified
        if handler is None:
            log.debug("notification %s from %s ignored", notification.method, self.peer)
            return
        try:
            handler(notification.method, notification.params)
        except NodeError as exc:
            log.warning("notification %s from %s refused: %s", notification.method[:64],
                        self.peer, exc)  # fmt: skip
        except Exception:
            log.exception("notification %s from %s failed", notification.method[:64], self.peer)

    async def _flush_handshake_bytes(self) -> None:
        for buffer in self.conn.data_to_send():
            await self.stream.send_all(buffer)

    async def _start(self, request: Request, nursery: trio.Nursery) -> None:
        """Start serving `request` once the node has room for it (its bytes, if it is large,
        and a request slot of this connection): meanwhile this connection reads nothing."""
        budget = self.server.intake.budget
        charged = await budget.acquire(self.server.intake.charge(request.size))
        try:
            await self.room.acquire()
        except BaseException:
            budget.release(charged)
            raise
        nursery.start_soon(self._serve, request, charged, name=f"rpc {request.method}")

    async def _serve(self, request: Request, charged: int) -> None:
        try:
            error: tuple[str, str] | None = None
            result: Any = None
            started = trio.current_time()
            try:
                result = await self.handler(request.method, request.params)
            except NodeError as exc:
                error = (exc.name, exc.detail)
            except Exception:
                # The edge of the node: a bug in one handler answers EIO and is logged loudly,
                # instead of taking down every other connection with it.
                log.exception("%s %s msgid=%d failed", self.peer, request.method, request.msgid)
                error = ("EIO", "internal error")
            log.debug(
                "%s %s msgid=%d -> %s",
                self.peer,
                request.method,
                request.msgid,
                error[0] if error else "ok",
            )
            if (observe := self.server.observe) is not None:
                observe(request.method, error[0] if error else None, trio.current_time() - started)
            assert self.writer is not None  # made before any request is served
            await self.writer.write(self.conn.send_response(request.msgid, error, result))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            log.debug("peer %s went away before msgid %d was answered", self.peer, request.msgid)
        finally:
            self.room.release()
            self.server.intake.budget.release(charged)
            self.idle.deadline = self._wait_until()  # the last one done: idle from now


async def _unauthenticated(method: str, params: list[Any]) -> Any:
    raise NodeError("EPERM", "not authenticated")


def _peer_name(stream: trio.SocketStream) -> str:
    try:
        host, port = stream.socket.getpeername()[:2]
    except OSError:
        return "?"
    return f"{host}:{port}"
