"""The RPC shells on real loopback sockets: `RpcServer` with a small test handler, called
through `RpcConnection` and `NodePool`.

Multiplexing (many calls, one connection, out of order), error replies, deadlines, connection
failures, authentication, the per-node connection and per-connection in-flight limits, and
the node-wide intake: large requests wait for room in one budget, and only a few connections at
a time buffer a large unfinished message; nothing is refused, everything is answered.
Every test runs under `trio.fail_after`, so nothing can hang.
"""

from __future__ import annotations

import errno
import random
import socket
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio

from ringfs.node.errors import AuthenticationError, NodeError, NoReply, Unavailable
from ringfs.node.rpc.client import ClientConfig, NodePool, RpcConnection
from ringfs.node.rpc.intake import UNCHARGED_PARTIAL, Intake
from ringfs.node.rpc.protocol import Connection, Limits, Role, encode
from ringfs.node.rpc.server import NotificationHandler, RpcServer, ServerConfig

SECRET = b"rpc test secret"
NODE_ID = "test-node"
DEADLINE = 10.0


class Handler:
    """echo, sleep, wait (until released), fail (NodeError), crash (a bug); block.put waits
    until released too, as a transfer the node is slow to take."""

    def __init__(self) -> None:
        self.running = 0
        self.max_running = 0
        self.started = 0
        self.release = trio.Event()
        # echo holds its first `gate_at` callers until that many run at once.
        self.gate_at = 0
        self.gate = trio.Event()
        self._watchers: list[tuple[int, trio.Event]] = []

    async def wait_running(self, count: int) -> None:
        """Return once `count` handlers run at the same time."""
        if self.running < count:
            reached = trio.Event()
            self._watchers.append((count, reached))
            await reached.wait()

    async def __call__(self, method: str, params: list[Any]) -> Any:
        self.started += 1
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        for count, reached in self._watchers:
            if self.running >= count:
                reached.set()
        try:
            if method == "echo":
                if self.running >= self.gate_at:
                    self.gate.set()
                await self.gate.wait()
                await trio.sleep(params[1] if len(params) > 1 else 0)
                return params[0]
            if method == "sleep":
                await trio.sleep(params[0])
                return params[1]
            if method in ("wait", "block.put"):
                await self.release.wait()
                return params[0]
            if method == "fail":
                raise NodeError(params[0], params[1])
            if method == "crash":
                raise RuntimeError("handler bug: secret internals")
            raise NodeError("ENOSYS", method)
        finally:
            self.running -= 1


async def start_server(
    nursery: trio.Nursery,
    handler: Handler,
    notified: NotificationHandler | None = None,
    intake: Intake | None = None,
    **options: Any,
) -> str:
    config = ServerConfig(secret=SECRET, node_id=NODE_ID, **options)
    server = RpcServer(config, handler, notified, intake)
    port = await nursery.start(server.serve)
    return f"127.0.0.1:{port}"


def client_config(**options: Any) -> ClientConfig:
    values: dict[str, Any] = {"secret": SECRET, "connect_timeout": 2.0, "request_timeout": 5.0}
    values.update(options)
    return ClientConfig(**values)


@pytest.fixture
def handler() -> Handler:
    return Handler()


class Clients:
    """Makes pools and connections for a test and closes them all at its end."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.nursery = nursery
        self._pools: list[NodePool] = []
        self._connections: list[RpcConnection] = []

    def pool(self, **options: Any) -> NodePool:
        pool = NodePool(client_config(**options), self.nursery)
        self._pools.append(pool)
        return pool

    async def connect(self, address: str, **options: Any) -> RpcConnection:
        rpc = await RpcConnection.connect(address, client_config(**options), nursery=self.nursery)
        self._connections.append(rpc)
        return rpc

    async def aclose(self) -> None:
        for pool in self._pools:
            await pool.aclose()
        for rpc in self._connections:
            await rpc.aclose()


@pytest.fixture
async def clients(nursery: trio.Nursery) -> AsyncIterator[Clients]:
    made = Clients(nursery)
    try:
        yield made
    finally:
        with trio.CancelScope(shield=True):
            await made.aclose()


async def test_200_concurrent_calls_share_one_connection(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    # The server accepts ONE connection: a second one would be refused and its calls fail.
    address = await start_server(nursery, handler, max_connections=1)
    pool = clients.pool()
    handler.gate_at = 20  # at least 20 requests must be running at once: not lock-step
    delays = random.Random(5)
    results: dict[int, Any] = {}

    async def one(n: int) -> None:
        value = [n, b"payload %d" % n, {"n": n}]
        results[n] = await pool.call(address, "echo", [value, delays.random() * 0.02])
        assert results[n] == value

    with trio.fail_after(DEADLINE):
        first = await pool.connection(address)
        async with trio.open_nursery() as calls:
            for n in range(200):
                calls.start_soon(one, n)
        assert await pool.connection(address) is first
    assert sorted(results) == list(range(200))
    assert first.peer_id == NODE_ID
    assert not first.closed
    assert handler.max_running >= 20
    assert handler.max_running <= Limits().max_in_flight


async def test_answers_written_at_once_arrive_whole_when_the_kernel_takes_them_in_part(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    # The answers are written at once, in their requests' tasks, while the client's reader
    # waits for its turn: the kernel takes some only in part, and the rest follow in order.
    address = await start_server(nursery, handler)
    pool = clients.pool()
    handler.gate_at = 40  # all answered together
    values = [random.randbytes(60_000) for _ in range(40)]
    results: dict[int, Any] = {}

    async def one(n: int) -> None:
        results[n] = await pool.call(address, "echo", [values[n]])

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as calls:
            for n in range(40):
                calls.start_soon(one, n)
    assert [results[n] for n in range(40)] == values
    assert not (await pool.connection(address)).closed


async def test_a_block_transfer_holds_up_no_other_call_to_its_node(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    """Blocks travel on a connection of their own: here a transfer takes the only request slot
    of its connection and the node reads nothing more from it, yet a call and a notification
    to the same node go through at once."""
    notes: list[Any] = []
    noted = trio.Event()

    def note(method: str, params: list[Any]) -> None:
        notes.append(params)
        noted.set()

    address = await start_server(nursery, handler, note, limits=Limits(max_in_flight=1))
    pool = clients.pool()
    put_answer: list[Any] = []

    async def put() -> None:
        put_answer.append(await pool.call(address, "block.put", [b"x" * 4 * 1024 * 1024]))

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as calls:
            calls.start_soon(put)
            await handler.wait_running(1)
            assert await pool.call(address, "echo", ["meta"], time_limit=2.0) == "meta"
            await pool.notify(address, "raft.message", [["heartbeat"]], time_limit=2.0)
            await noted.wait()
            assert not put_answer  # still held
            handler.release.set()
    assert notes == [["heartbeat"]]
    assert put_answer == [b"x" * 4 * 1024 * 1024]
    assert await pool.connection(address, bulk=True) is not await pool.connection(address)


async def test_slow_call_does_not_block_fast_calls(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    address = await start_server(nursery, handler)
    slow_result: list[Any] = []
    slow_done = trio.Event()
    with trio.fail_after(DEADLINE):
        rpc = await clients.connect(address)

        async def slow() -> None:
            slow_result.append(await rpc.call("wait", ["slow"], time_limit=5))
            slow_done.set()

        nursery.start_soon(slow)
        await handler.wait_running(1)
        for n in range(20):
            assert await rpc.call("echo", [n], time_limit=2) == n
        assert slow_result == []  # still running, yet twenty fast calls came back
        handler.release.set()
        await slow_done.wait()
    assert slow_result == ["slow"]


async def test_error_reply_raises_node_error(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    address = await start_server(nursery, handler)
    pool = clients.pool()
    with trio.fail_after(DEADLINE):
        with pytest.raises(NodeError) as caught:
            await pool.call(address, "fail", ["ENOENT", "no such block"])
        assert caught.value.name == "ENOENT"
        assert caught.value.detail == "no such block"
        assert caught.value.errno == errno.ENOENT
        with pytest.raises(NodeError) as caught:
            await pool.call(address, "nope", [])
        assert caught.value.name == "ENOSYS"
        # An error reply is an answer: the connection and the node stay healthy.
        assert not pool.is_suspect(address)
        assert await pool.call(address, "echo", ["still here"]) == "still here"


async def test_handler_bug_is_eio_without_traceback(
    nursery: trio.Nursery, handler: Handler, clients: Clients, expected_logs: list[str]
) -> None:
    expected_logs.append("crash msgid=")  # the node logs its own bug loudly (ERROR)
    address = await start_server(nursery, handler)
    pool = clients.pool()
    with trio.fail_after(DEADLINE):
        with pytest.raises(NodeError) as caught:
            await pool.call(address, "crash", [])
        assert caught.value.name == "EIO"
        assert "Traceback" not in caught.value.detail
        assert "secret internals" not in caught.value.detail
        assert await pool.call(address, "echo", [1]) == 1


async def test_notifications_arrive_in_order_and_get_no_answer(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    received: list[tuple[str, list[Any]]] = []
    address = await start_server(nursery, handler, lambda m, p: received.append((m, p)))
    pool = clients.pool()
    with trio.fail_after(DEADLINE):
        await pool.notify(address, "note", [[1], [2, b"two"], [3]], time_limit=2)
        await pool.notify(address, "other", [[4]], time_limit=2)
        # Notifications are handled as they are read, so a call sent after them is answered
        # after they were handled.
        assert await pool.call(address, "echo", ["after"]) == "after"
    assert received == [("note", [1]), ("note", [2, b"two"]), ("note", [3]), ("other", [4])]
    assert handler.started == 1  # the request handler saw only the call


def fill(rpc: RpcConnection) -> list[bytes]:
    """Notifications sent at once, without a checkpoint (so the peer reads none of them),
    until the connection takes no more: the kernel took the last one only in part."""
    sent: list[bytes] = []
    while rpc.notify_now("note", [[payload := random.randbytes(60_000)]]):
        sent.append(payload)
    return sent


async def test_notify_now_sends_in_the_callers_task_in_order_with_the_rest(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    received: list[tuple[str, list[Any]]] = []
    address = await start_server(nursery, handler, lambda m, p: received.append((m, p)))
    rpc = await clients.connect(address)
    with trio.fail_after(DEADLINE):
        assert rpc.notify_now("note", [[1], [2]])  # a plain function: sent without waiting
        await rpc.notify("note", [[3]], time_limit=2)
        filled = fill(rpc)  # the rest of the last one is written before the next message
        await rpc.notify("note", [[4]], time_limit=5)
        assert await rpc.call("echo", ["after"], time_limit=5) == "after"
    notes = [[1], [2], [3], *([payload] for payload in filled), [4]]
    assert received == [("note", params) for params in notes]
    assert not rpc.closed


async def test_a_request_to_an_idle_connection_leaves_before_the_call_first_yields(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    """Written at once, in one write, instead of under the send lock: taking the lock and
    each buffer's write yielded to the scheduler, and the node woke once per buffer."""
    address = await start_server(nursery, handler)
    rpc = await clients.connect(address)
    with trio.fail_after(DEADLINE):
        with trio.CancelScope() as cancelled:
            cancelled.cancel()  # the call's first checkpoint ends it
            await rpc.call("wait", ["unanswered"], time_limit=5)
        assert cancelled.cancelled_caught
        await handler.wait_running(1)  # and yet the request reached the node
        handler.release.set()
        assert await rpc.call("echo", ["after"], time_limit=5) == "after"


async def test_a_request_that_never_went_out_is_not_in_doubt(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    """A call waiting for the send lock (another message being written) when its connection
    fails: the node never saw it, so it is Unavailable, not NoReply (which makes a metadata
    command be retried until its outcome is known)."""
    address = await start_server(nursery, handler)
    rpc = await clients.connect(address)
    failures: list[Unavailable] = []

    async def call() -> None:
        with pytest.raises(Unavailable) as failed:
            await rpc.call("echo", ["never sent"], time_limit=5)
        failures.append(failed.value)

    with trio.fail_after(DEADLINE):
        async with trio.open_nursery() as calls, rpc._writer.lock:  # as a long write would
            calls.start_soon(call)
            await trio.testing.wait_all_tasks_blocked()
            await rpc.aclose()
    [failure] = failures
    assert not isinstance(failure, NoReply)
    assert handler.started == 0


async def test_a_peer_that_never_reads_the_rest_of_a_notification_is_cut_off(
    nursery: trio.Nursery, clients: Clients
) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    async def answer_the_handshake_then_read_nothing() -> None:
        sock, _ = await listener.accept()
        async with trio.SocketStream(sock) as stream:
            conn = Connection(Role.SERVER, SECRET, node_id=NODE_ID)
            while not conn.is_open:
                conn.receive_data(await stream.receive_some(65536))
                for buffer in conn.data_to_send():
                    await stream.send_all(buffer)
            await trio.sleep_forever()  # until the test ends

    nursery.start_soon(answer_the_handshake_then_read_nothing)
    try:
        rpc = await clients.connect(f"127.0.0.1:{port}", request_timeout=0.3)
        fill(rpc)
        await trio.sleep(1.5)  # the rest has 0.3 s (the request timeout) to go
        assert rpc.closed
        with trio.fail_after(DEADLINE), pytest.raises(Unavailable):
            await rpc.notify("note", [[1]], time_limit=1)
    finally:
        listener.close()


async def test_a_refused_notification_is_logged_and_the_connection_stays(
    nursery: trio.Nursery,
    handler: Handler,
    clients: Clients,
    expected_logs: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    expected_logs += ["notification bad from", "notification buggy from"]

    def notified(method: str, params: list[Any]) -> None:
        if method == "bad":
            raise NodeError("EINVAL", "malformed")
        if method == "buggy":
            raise RuntimeError("handler bug")

    address = await start_server(nursery, handler, notified)
    with trio.fail_after(DEADLINE):
        rpc = await clients.connect(address)
        await rpc.notify("bad", [[]], time_limit=2)
        await rpc.notify("buggy", [[]], time_limit=2)
        assert await rpc.call("echo", [1], time_limit=2) == 1
    assert not rpc.closed
    logged = [r.getMessage() for r in caplog.records]
    assert any("notification bad from" in m and "malformed" in m for m in logged)
    assert any("notification buggy from" in m for m in logged)


async def test_notify_to_a_closed_port_is_unavailable(
    nursery: trio.Nursery, clients: Clients
) -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{placeholder.getsockname()[1]}"
        pool = clients.pool()
        with trio.fail_after(DEADLINE), pytest.raises(Unavailable):
            await pool.notify(address, "note", [[1]], time_limit=2)
        assert pool.is_suspect(address)


async def test_call_timeout_raises_unavailable(
    nursery: trio.Nursery, handler: Handler, clients: Clients, expected_logs: list[str]
) -> None:
    expected_logs.append("timed out")
    address = await start_server(nursery, handler)
    pool = clients.pool()
    with trio.fail_after(DEADLINE):
        start = trio.current_time()
        with pytest.raises(Unavailable):
            await pool.call(address, "sleep", [30, None], time_limit=0.2)
        assert trio.current_time() - start < 2
        assert pool.is_suspect(address)
        # The node itself is fine: the next call gets through.
        assert await pool.call(address, "echo", ["after"]) == "after"


async def test_connecting_to_a_closed_port_is_unavailable_quickly(
    nursery: trio.Nursery, clients: Clients
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"127.0.0.1:{port}"
    pool = clients.pool(connect_timeout=5.0)
    with trio.fail_after(DEADLINE):
        start = trio.current_time()
        with pytest.raises(Unavailable):
            await pool.call(address, "echo", [1])
        with pytest.raises(Unavailable):
            await clients.connect(address)
        assert trio.current_time() - start < 1
    assert pool.is_suspect(address)


async def test_silent_peer_is_unavailable_after_connect_timeout(clients: Clients) -> None:
    # Something listens on the port but never speaks the protocol.
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    try:
        with trio.fail_after(DEADLINE):
            start = trio.current_time()
            with pytest.raises(Unavailable):
                await clients.connect(f"127.0.0.1:{port}", connect_timeout=0.3)
            assert trio.current_time() - start < 2
    finally:
        listener.close()


async def test_reset_during_handshake_is_unavailable(
    nursery: trio.Nursery, clients: Clients
) -> None:
    # A peer that accepts and then resets the connection (a crashing node, a full node
    # dropping connections hard): the caller must see Unavailable like any unreachable node,
    # not a raw trio exception the pool and the mount do not expect.
    async def reset(stream: trio.SocketStream) -> None:
        await stream.receive_some(1)  # the client's hello has arrived
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        stream.socket.close()  # close with unread data and linger 0: RST

    listeners = await nursery.start(trio.serve_tcp, reset, 0)
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(DEADLINE):
        with pytest.raises(Unavailable):
            await clients.connect(f"127.0.0.1:{port}")
        pool = clients.pool()
        with pytest.raises(Unavailable):
            await pool.call(f"127.0.0.1:{port}", "echo", [1])
        assert pool.is_suspect(f"127.0.0.1:{port}")


async def test_wrong_secret_raises_authentication_error(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    address = await start_server(nursery, handler)
    with trio.fail_after(DEADLINE):
        with pytest.raises(AuthenticationError):
            await clients.connect(address, secret=b"guessed secret")
        # Through a pool, the node is unusable like an unreachable one; the cause is kept.
        with pytest.raises(Unavailable) as refused:
            await clients.pool(secret=b"guessed secret").call(address, "echo", [1])
        assert isinstance(refused.value.__cause__, AuthenticationError)
        # Nothing was served to the impostor, and honest clients are unaffected.
        assert handler.started == 0
        assert await clients.pool().call(address, "echo", [2]) == 2
        assert handler.started == 1


async def test_connection_limit_closes_the_extra_connection(
    nursery: trio.Nursery, handler: Handler, clients: Clients, expected_logs: list[str]
) -> None:
    expected_logs.append("refusing connection")
    address = await start_server(nursery, handler, max_connections=2)
    with trio.fail_after(DEADLINE):
        first = await clients.connect(address)
        second = await clients.connect(address)
        with pytest.raises(Unavailable):
            await clients.connect(address)
        # The two admitted connections keep working.
        assert await first.call("echo", [1], time_limit=2) == 1
        assert await second.call("echo", [2], time_limit=2) == 2
        # Closing one frees its slot (once the server has seen it go).
        await first.aclose()
        while True:
            try:
                third = await clients.connect(address)
                break
            except Unavailable:
                await trio.sleep(0.02)
        assert await third.call("echo", [3], time_limit=2) == 3


async def test_in_flight_limit_holds_back_requests_yet_all_complete(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    address = await start_server(nursery, handler, limits=Limits(max_in_flight=2))
    results: list[int] = []
    with trio.fail_after(DEADLINE):
        rpc = await clients.connect(address)

        async def one(n: int) -> None:
            results.append(await rpc.call("wait", [n], time_limit=5))

        async with trio.open_nursery() as calls:
            for n in range(8):
                calls.start_soon(one, n)
            await handler.wait_running(2)
            await trio.sleep(0.2)  # time enough for the server to (wrongly) start more
            assert handler.started == 2
            assert handler.running == 2
            # The limit is per connection: another connection is served meanwhile.
            other = await clients.connect(address)
            handler.gate_at = 0
            assert await other.call("echo", ["other"], time_limit=2) == "other"
            handler.release.set()
    assert sorted(results) == list(range(8))
    assert handler.max_running <= 3  # two "wait" on the limited connection + the other echo
    assert handler.started == 9


async def test_a_trickled_message_is_cut_off_at_the_frame_deadline(
    nursery: trio.Nursery, handler: Handler, expected_logs: list[str]
) -> None:
    expected_logs.append("message unfinished")
    address = await start_server(nursery, handler, frame_timeout=0.5)
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    conn = Connection(Role.CLIENT, SECRET)
    with trio.fail_after(DEADLINE):
        while not conn.is_open:
            for buffer in conn.data_to_send():
                await stream.send_all(buffer)
            if not conn.is_open:
                conn.receive_data(await stream.receive_some(65536))
        _, buffers = conn.send_request("echo", [b"x" * 1000])
        message = b"".join(bytes(b) for b in buffers)
        started = trio.current_time()
        closed = False
        # One byte every 0.1 s: each read is quick, the message never completes in time.
        for i in range(len(message) - 1):
            try:
                await stream.send_all(message[i : i + 1])
            except trio.BrokenResourceError:
                closed = True
                break
            await trio.sleep(0.1)
        await stream.aclose()
    assert closed
    assert trio.current_time() - started < 3


async def test_a_request_pipelined_behind_the_handshake_is_served(
    nursery: trio.Nursery, handler: Handler
) -> None:
    address = await start_server(nursery, handler)
    host, port = address.rsplit(":", 1)
    stream = await trio.open_tcp_stream(host, int(port))
    conn = Connection(Role.CLIENT, SECRET)
    with trio.fail_after(DEADLINE):
        for buffer in conn.data_to_send():
            await stream.send_all(buffer)
        conn.receive_data(await stream.receive_some(65536))  # the challenge
        auth = b"".join(bytes(b) for b in conn.data_to_send())
        # The client's proof and its first request in one segment, before the welcome.
        request = b"".join(bytes(b) for b in encode([0, 7, "echo", ["early"]]))
        await stream.send_all(auth + request)
        received = b""
        while b"early" not in received:
            data = await stream.receive_some(65536)
            assert data, "the node closed the connection"
            received += data
    await stream.aclose()
    # The node is still serving everyone else.
    assert await NodePool(client_config(), nursery).call(address, "echo", [1]) == 1


# -- the node-wide intake (ringfs.node.rpc.intake) ------------------------------------------

MiB = 1024 * 1024
# Messages of at most 1 MiB, so that a small budget still holds a whole one.
SMALL_LIMITS = Limits(max_frame=MiB + 4096, max_bin_len=MiB)
#: Where a test's large message stalls: just past what a connection buffers without a token.
STALL_AT = UNCHARGED_PARTIAL + 64 * 1024


async def test_large_requests_wait_for_room_and_small_ones_do_not(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    intake = Intake(max_bytes=int(1.5 * MiB), big_frames=4)
    address = await start_server(nursery, handler, intake=intake, limits=SMALL_LIMITS)
    payload = b"x" * (400 * 1024)
    answers: list[int] = []
    with trio.fail_after(DEADLINE):
        connections = [await clients.connect(address) for _ in range(4)]

        async def large(n: int) -> None:
            reply = await connections[n].call("wait", [n, payload], time_limit=DEADLINE)
            answers.append(reply)

        async with trio.open_nursery() as calls:
            for n in range(4):
                calls.start_soon(large, n)
            await handler.wait_running(3)
            while intake.stats()["waiting"] < 1:  # noqa: ASYNC110 - no event signals it
                await trio.sleep(0.01)
            assert handler.running == 3  # the fourth does not fit
            assert intake.stats()["held"] <= int(1.5 * MiB)
            # A small request on another connection is not held up.
            other = await clients.connect(address)
            assert await other.call("echo", ["small"], time_limit=2) == "small"
            handler.release.set()
    assert sorted(answers) == [0, 1, 2, 3]
    assert intake.stats() == {"held": 0, "waiting": 0, "big_frames": 0}


async def test_few_connections_at_once_buffer_a_large_unfinished_message(
    nursery: trio.Nursery, handler: Handler
) -> None:
    intake = Intake(max_bytes=16 * MiB, big_frames=2)
    address = await start_server(nursery, handler, intake=intake, limits=SMALL_LIMITS)
    host, port = address.rsplit(":", 1)
    streams, messages = [], []
    with trio.fail_after(DEADLINE):
        for n in range(4):
            stream = await trio.open_tcp_stream(host, int(port))
            conn = Connection(Role.CLIENT, SECRET, limits=SMALL_LIMITS)
            while not conn.is_open:
                for buffer in conn.data_to_send():
                    await stream.send_all(buffer)
                if not conn.is_open:
                    conn.receive_data(await stream.receive_some(65536))
            _, buffers = conn.send_request("sleep", [0, f"answer {n}", b"y" * 900_000])
            message = b"".join(bytes(b) for b in buffers)
            # Past 256 KiB, and stall. A connection with no token leaves the rest in TCP's
            # buffers, so it is kept small: buffers may be small on a loaded machine.
            await stream.send_all(message[:STALL_AT])
            streams.append(stream)
            messages.append(message)
        while intake.stats()["big_frames"] < 2:  # noqa: ASYNC110 - no event signals it
            await trio.sleep(0.01)
        await trio.sleep(0.2)
        assert intake.stats()["big_frames"] == 2  # the other two wait, unread past 256 KiB
        for stream, message in zip(streams, messages, strict=True):
            await stream.send_all(message[STALL_AT:])
        for n, stream in enumerate(streams):
            received = b""
            while f"answer {n}".encode() not in received:
                data = await stream.receive_some(65536)
                assert data, "the node closed the connection"
                received += data
            await stream.aclose()
    assert intake.stats() == {"held": 0, "waiting": 0, "big_frames": 0}


async def test_an_idle_connection_is_closed_and_the_next_call_opens_another(
    nursery: trio.Nursery, handler: Handler, clients: Clients
) -> None:
    address = await start_server(nursery, handler, idle_timeout=0.3)
    pool = clients.pool()
    with trio.fail_after(DEADLINE):
        assert await pool.call(address, "echo", ["first"]) == "first"
        first = await pool.connection(address)
        # A request that runs longer than the idle time keeps its connection.
        assert await pool.call(address, "sleep", [0.6, "slow"]) == "slow"
        assert await pool.connection(address) is first
        while not first.closed:  # noqa: ASYNC110 - no event signals the peer's close
            await trio.sleep(0.05)
        assert await pool.call(address, "echo", ["again"]) == "again"
        assert await pool.connection(address) is not first
        assert not pool.is_suspect(address)  # an idle close is no failure
