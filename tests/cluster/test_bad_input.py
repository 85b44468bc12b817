"""A real node (`daemon.run`: store + metadata + server) fed hostile or broken input.

Raw TCP clients send a wrong secret, oversized frames, truncated frames, garbage, and
well-framed requests with bad parameters. A malformed or oversized message must close only that
connection, with a logged reason; a bad parameter must be an error reply, and a bad one-way call
(notification) a logged refusal. After each one, a
well-behaved client (one connected before, and a fresh one) still stores and reads blocks and
queries the metadata.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest
import trio

from ringfs.node import daemon
from ringfs.node.checksum import checksum
from ringfs.node.cluster.map import parse_members
from ringfs.node.errors import NodeError
from ringfs.node.meta.commands import FsInfo, FsStats, decode_result
from ringfs.node.rpc.client import ClientConfig, NodePool
from ringfs.node.rpc.protocol import (
    MAGIC,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    REQUEST,
    Connection,
    Response,
    Role,
    encode,
    proof,
)
from tests.conftest import free_ports

SECRET = b"bad input test secret"
NODE_ID = "n1"
MiB = 1024 * 1024
DEADLINE = 10.0
# How long a node may take to close a connection it should close.
CLOSE_WITHIN = 3.0


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


@dataclass
class Node:
    port: int
    data_dir: Path
    tmp_path: Path
    pool: NodePool  # connected before the test's bad input
    nursery: trio.Nursery

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def store(self) -> Path:
        return self.data_dir / "store"


def client_config() -> ClientConfig:
    return ClientConfig(secret=SECRET, connect_timeout=2.0, request_timeout=5.0)


@pytest.fixture
async def node(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Node]:
    port = free_ports(1)[0]
    config = daemon.NodeConfig(
        node_id=NODE_ID,
        data_dir=tmp_path / NODE_ID,
        secret=SECRET,
        port=port,
        members=parse_members(f"{NODE_ID}=127.0.0.1:{port}"),
        replicas=1,
    )
    with trio.fail_after(DEADLINE):
        assert await nursery.start(daemon.run, config) == port
        pool = NodePool(client_config(), nursery)
        running = Node(port, config.data_dir, tmp_path, pool, nursery)
        info = await pool.call(running.address, "node.info", [])
        await wait_for_filesystem(pool, running.address)
    assert info["node_id"] == NODE_ID
    try:
        yield running
    finally:
        with trio.CancelScope(shield=True):
            await pool.aclose()


async def wait_for_filesystem(pool: NodePool, address: str) -> None:
    """Until the node's single-member meta group elected itself and created the filesystem."""
    while True:
        try:
            wire = await pool.call(address, "meta.query", [FsInfo().to_wire()])
        except NodeError as exc:
            if exc.name != "ENOTLEADER":
                raise
        else:
            if decode_result(FsInfo(), wire).chunk_size:
                return
        await trio.sleep(0.05)


async def assert_healthy(node: Node) -> None:
    """The connection made before the bad input and a brand-new one both work fully."""
    fresh = NodePool(client_config(), node.nursery)
    try:
        with trio.fail_after(DEADLINE):
            for pool in (node.pool, fresh):
                block_id = os.urandom(16)
                data = os.urandom(200_000)
                assert (
                    await pool.call(node.address, "block.put", [block_id, sha256(data), data])
                    is None
                )
                assert await pool.call(node.address, "block.get", [block_id]) == [
                    data,
                    sha256(data),
                ]
                wire = await pool.call(node.address, "meta.query", [FsInfo().to_wire()])
                stats = decode_result(FsInfo(), wire)
                assert isinstance(stats, FsStats)
                assert stats.chunk_size == daemon.DEFAULT_CHUNK_SIZE
                assert stats.inode_count >= 1
    finally:
        await fresh.aclose()


# -- raw clients -----------------------------------------------------------------------------


async def raw_stream(node: Node) -> trio.SocketStream:
    return await trio.open_tcp_stream("127.0.0.1", node.port)


async def raw_handshake(node: Node) -> tuple[trio.SocketStream, Connection]:
    """A correct handshake driven by a client `Connection` over a raw stream."""
    stream = await raw_stream(node)
    conn = Connection(Role.CLIENT, SECRET)
    while True:
        for buffer in conn.data_to_send():
            await stream.send_all(buffer)
        if conn.is_open:
            break
        data = await stream.receive_some(65536)
        assert data, "node closed the connection during a correct handshake"
        conn.receive_data(data)
    assert conn.peer_id == NODE_ID
    return stream, conn


async def read_until_closed(stream: trio.SocketStream) -> bytes | None:
    """Everything the node sends until it closes; None if it kept the connection open."""
    received = bytearray()
    with trio.move_on_after(CLOSE_WITHIN):
        try:
            while data := await stream.receive_some(65536):
                received += data
        except trio.BrokenResourceError:  # closed with a reset: closed all the same
            pass
        return bytes(received)
    return None


async def send_quietly(stream: trio.SocketStream, data: bytes) -> None:
    """Send, tolerating a node that already closed the connection on us."""
    with contextlib.suppress(trio.BrokenResourceError):
        await stream.send_all(data)


async def raw_call(
    stream: trio.SocketStream, conn: Connection, method: str, params: list[Any]
) -> Response:
    msgid, buffers = conn.send_request(method, params)
    for buffer in buffers:
        await stream.send_all(buffer)
    while True:
        data = await stream.receive_some(MiB)
        assert data, f"node closed the connection instead of answering {method}"
        for event in conn.receive_data(data):
            if isinstance(event, Response) and event.msgid == msgid:
                return event


def server_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.get_records("call")
        if r.name == "ringfs.node.rpc.server" and r.levelno == logging.WARNING
    ]


def files_outside_store(node: Node) -> set[Path]:
    return {
        path
        for path in node.tmp_path.rglob("*")
        if node.store not in path.parents and path != node.store
    }


def stored_files(node: Node) -> list[Path]:
    return [path for path in node.store.rglob("*") if path.is_file()]


# -- connection-level abuse: the connection is closed ----------------------------------------


async def test_wrong_secret_is_refused_with_a_reason(
    node: Node, caplog: pytest.LogCaptureFixture, expected_logs: list[str]
) -> None:
    expected_logs.append("refused")
    with trio.fail_after(DEADLINE):
        stream = await raw_stream(node)
        nonce = os.urandom(NONCE_SIZE)
        await stream.send_all(msgpack.packb([MAGIC, PROTOCOL_VERSION, "hello", nonce, ""]))
        unpacker = msgpack.Unpacker(raw=False)
        while not (challenge := next(iter(unpacker), None)):
            data = await stream.receive_some(65536)
            assert data
            unpacker.feed(data)
        assert challenge[2] == "challenge"
        wrong = proof(b"guessed secret", b"client", challenge[3], nonce)
        await stream.send_all(msgpack.packb([MAGIC, PROTOCOL_VERSION, "auth", wrong, ""]))
        rest = await read_until_closed(stream)
        await stream.aclose()
    assert rest is not None, "node kept a connection open after a failed proof"
    unpacker.feed(rest)
    replies = list(unpacker)
    assert len(replies) == 1
    assert replies[0][:3] == [MAGIC, PROTOCOL_VERSION, "refused"]
    assert isinstance(replies[0][3], str)
    assert replies[0][3]
    warnings = server_warnings(caplog)
    assert any("refused" in w and "secret" in w for w in warnings), warnings
    await assert_healthy(node)


async def test_garbage_before_handshake_closes_the_connection(
    node: Node, caplog: pytest.LogCaptureFixture, expected_logs: list[str]
) -> None:
    expected_logs.append("closing connection")
    with trio.fail_after(DEADLINE):
        stream = await raw_stream(node)
        await send_quietly(stream, b"GET / HTTP/1.1\r\nHost: node\r\n\r\n")
        rest = await read_until_closed(stream)
        await stream.aclose()
    assert rest == b""  # closed, and no handshake reply to a stranger
    assert any("closing connection" in w for w in server_warnings(caplog))
    await assert_healthy(node)


async def test_garbage_after_handshake_closes_the_connection_with_a_logged_reason(
    node: Node, caplog: pytest.LogCaptureFixture, expected_logs: list[str]
) -> None:
    expected_logs.append("closing connection")
    with trio.fail_after(DEADLINE):
        stream, _ = await raw_handshake(node)
        await send_quietly(stream, b"\xc1\xc1garbage\x00\xff")
        rest = await read_until_closed(stream)
        await stream.aclose()
    assert rest is not None, "node kept the connection open after garbage"
    warnings = [w for w in server_warnings(caplog) if "closing connection" in w]
    assert len(warnings) == 1
    assert "127.0.0.1" in warnings[0]  # which peer
    assert "undecodable" in warnings[0] or "Format" in warnings[0]  # and why
    await assert_healthy(node)


async def test_malformed_message_after_handshake_closes_the_connection(
    node: Node, expected_logs: list[str]
) -> None:
    expected_logs.append("closing connection")
    with trio.fail_after(DEADLINE):
        stream, _ = await raw_handshake(node)
        await send_quietly(stream, msgpack.packb([REQUEST, -5, "block.get", []]))
        rest = await read_until_closed(stream)
        await stream.aclose()
    assert rest == b""
    await assert_healthy(node)


async def test_frame_claimed_over_the_limit_closes_the_connection(
    node: Node, expected_logs: list[str]
) -> None:
    # A bin header claiming 100 MiB (the limit is 16 MiB), followed by a few bytes.
    expected_logs.append("closing connection")
    with trio.fail_after(DEADLINE):
        stream, _ = await raw_handshake(node)
        header = b"\xc6" + struct.pack(">I", 100 * MiB)
        await send_quietly(stream, header + os.urandom(64 * 1024))
        rest = await read_until_closed(stream)
        await stream.aclose()
    assert rest is not None, "node waits for a frame its header already shows is over the limit"
    await assert_healthy(node)


async def test_frame_sent_over_the_limit_closes_the_connection(
    node: Node, caplog: pytest.LogCaptureFixture, expected_logs: list[str]
) -> None:
    # The same claim, with the bytes actually sent: the node must stop before holding them all.
    expected_logs.append("closing connection")
    with trio.fail_after(DEADLINE):
        stream, _ = await raw_handshake(node)
        await send_quietly(stream, b"\xc6" + struct.pack(">I", 100 * MiB))
        payload = bytes(MiB)
        for _ in range(20):
            await send_quietly(stream, payload)
        rest = await read_until_closed(stream)
        await stream.aclose()
    assert rest is not None, "node kept the connection open past max_frame"
    assert any("closing connection" in w for w in server_warnings(caplog))
    await assert_healthy(node)


async def test_truncated_frame_then_eof_leaves_the_node_fine(node: Node) -> None:
    with trio.fail_after(DEADLINE):
        stream, _ = await raw_handshake(node)
        frame = b"".join(
            bytes(b)
            for b in encode([REQUEST, 0, "block.put", [b"\x01" * 16, b"\x02" * 32, bytes(100_000)]])
        )
        await stream.send_all(frame[: len(frame) // 2])
        await stream.send_eof()
        rest = await read_until_closed(stream)
        await stream.aclose()
    assert rest == b""
    assert stored_files(node) == []
    await assert_healthy(node)


async def test_reset_after_handshake_leaves_the_node_fine(node: Node) -> None:
    # A client killed mid-call (or closing with unread answers) resets the connection.
    with trio.fail_after(DEADLINE):
        stream, conn = await raw_handshake(node)
        for buffer in conn.send_request("node.stats", [])[1]:
            await stream.send_all(buffer)
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await stream.aclose()
    await assert_healthy(node)


async def test_handshake_then_silence_is_not_served_and_node_fine(node: Node) -> None:
    # Half a hello, then nothing: the node keeps serving others meanwhile.
    with trio.fail_after(DEADLINE):
        stream = await raw_stream(node)
        hello = msgpack.packb([MAGIC, PROTOCOL_VERSION, "hello", os.urandom(NONCE_SIZE), ""])
        await stream.send_all(hello[:10])
        await assert_healthy(node)
        await stream.aclose()
    await assert_healthy(node)


# -- bad parameters: an error reply, the connection stays open -------------------------------


async def expect_error(node: Node, method: str, params: list[Any], name: str) -> None:
    with trio.fail_after(DEADLINE):
        stream, conn = await raw_handshake(node)
        response = await raw_call(stream, conn, method, params)
        assert response.error is not None, f"{method} {params!r:.80} succeeded"
        assert response.error[0] == name, response.error
        assert "Traceback" not in response.error[1]
        # An error reply is not a protocol violation: the same connection still works.
        assert (await raw_call(stream, conn, "node.info", [])).error is None
        await stream.aclose()
    await assert_healthy(node)


async def test_block_get_with_a_path_as_str_is_einval(node: Node) -> None:
    before = files_outside_store(node)
    await expect_error(node, "block.get", ["../../etc/passwd"], "EINVAL")
    assert files_outside_store(node) == before


async def test_block_get_with_a_path_as_id_bytes_is_enoent(node: Node) -> None:
    evil = b"../../etc/passwd"
    assert len(evil) == 16
    before = files_outside_store(node)
    await expect_error(node, "block.get", [evil], "ENOENT")
    assert files_outside_store(node) == before


async def test_block_put_with_a_path_as_id_bytes_stays_inside_the_store(node: Node) -> None:
    evil = b"../../etc/passwd"
    data = b"not a password file"
    before = files_outside_store(node)
    with trio.fail_after(DEADLINE):
        await node.pool.call(node.address, "block.put", [evil, sha256(data), data])
        assert await node.pool.call(node.address, "block.get", [evil]) == [data, sha256(data)]
    assert files_outside_store(node) == before
    name = evil.hex()
    assert stored_files(node) == [node.store / "blocks" / name[:2] / name[2:4] / name]
    await assert_healthy(node)


async def test_a_bad_map_epoch_is_einval_even_for_a_block_that_is_there(node: Node) -> None:
    block_id, data = os.urandom(16), b"stored"
    with trio.fail_after(DEADLINE):
        await node.pool.call(node.address, "block.put", [block_id, sha256(data), data])
    for epoch in (-1, True, "1", 1.5):
        await expect_error(node, "block.get", [block_id, epoch], "EINVAL")
        await expect_error(node, "block.put", [block_id, sha256(data), data, epoch], "EINVAL")
    await assert_healthy(node)


async def test_block_get_with_a_span_answers_those_bytes_only(node: Node) -> None:
    block_id, data = os.urandom(16), os.urandom(100_000)
    with trio.fail_after(DEADLINE):
        await node.pool.call(node.address, "block.put", [block_id, checksum(data), data])
        for offset, length in [(0, 10), (99_990, 10), (99_990, 50), (100_000, 5), (5, 0)]:
            answer = await node.pool.call(node.address, "block.get", [block_id, 0, offset, length])
            assert answer == [data[offset : offset + length], checksum(data)]
    await assert_healthy(node)


async def test_block_put_with_a_bad_checksum_is_ebadmsg_and_stores_nothing(node: Node) -> None:
    block_id = os.urandom(16)
    data = os.urandom(100_000)
    await expect_error(node, "block.put", [block_id, sha256(b"other data"), data], "EBADMSG")
    with trio.fail_after(DEADLINE):
        stream, conn = await raw_handshake(node)
        response = await raw_call(stream, conn, "block.get", [block_id])
        await stream.aclose()
    assert response.error is not None
    assert response.error[0] == "ENOENT"
    assert [p for p in stored_files(node) if block_id.hex() in p.name] == []
    assert list((node.store / "tmp").iterdir()) == []


BAD_REQUESTS = {
    "unknown method": ("block.steal", [b"\x00" * 16], "ENOSYS"),
    "empty method": ("", [], "ENOSYS"),
    "block.get no params": ("block.get", [], "EINVAL"),
    "block.get two params": ("block.get", [b"\x00" * 16, b"\x00" * 16], "EINVAL"),
    "block.get an offset alone": ("block.get", [b"\x00" * 16, 1, 0], "EINVAL"),
    "block.get negative offset": ("block.get", [b"\x00" * 16, 1, -1, 10], "EINVAL"),
    "block.get str length": ("block.get", [b"\x00" * 16, 1, 0, "10"], "EINVAL"),
    "block.get bool length": ("block.get", [b"\x00" * 16, 1, 0, True], "EINVAL"),
    "block.get five params": ("block.get", [b"\x00" * 16, 1, 0, 10, 0], "EINVAL"),
    "block.put two params": ("block.put", [b"\x00" * 16, b"\x00" * 32], "EINVAL"),
    "block.put str data": ("block.put", [b"\x00" * 16, sha256(b"x"), "x"], "EINVAL"),
    "block.put short checksum": ("block.put", [b"\x00" * 16, b"\x00" * 8, b"x"], "EINVAL"),
    "block.delete int id": ("block.delete", [5], "EINVAL"),
    "node.info two params": ("node.info", [1, 2], "EINVAL"),
    "node.info epoch not a number": ("node.info", ["1"], "EINVAL"),
    "meta.apply arity": ("meta.apply", [b"c" * 16, 1, 0], "EINVAL"),
    "meta.apply unknown op": ("meta.apply", [b"c" * 16, 1, 0, ["nosuchop", 1]], "EINVAL"),
    "meta.apply not a list": ("meta.apply", [b"c" * 16, 1, 0, "mkdir"], "EINVAL"),
    "meta.apply missing fields": ("meta.apply", [b"c" * 16, 1, 0, ["mkdir", 1]], "EINVAL"),
    "meta.apply str name": (
        "meta.apply",
        [b"c" * 16, 1, 0, ["mkdir", 1, "name", 0o755, 0, 0, 0]],
        "EINVAL",
    ),
    "meta.apply str client id": (
        "meta.apply",
        ["c", 1, 0, ["mkdir", 1, b"name", 0o755, 0, 0, 0]],
        "EINVAL",
    ),
    "meta.apply negative seq": (
        "meta.apply",
        [b"c" * 16, -1, 0, ["mkdir", 1, b"name", 0o755, 0, 0, 0]],
        "EINVAL",
    ),
    "meta.query unknown op": ("meta.query", [["nosuchquery"]], "EINVAL"),
    "snapshot part as str": ("raft.snapshot_part", ["n2", 5, 9, 5, 0, "image"], "EINVAL"),
    "snapshot part, negative offset": ("raft.snapshot_part", ["n2", 5, 9, 5, -1, b"x"], "EINVAL"),
    "snapshot part from outside the group": (
        "raft.snapshot_part",
        ["n9", 5, 9, 1, 0, b"x"],
        "EINVAL",
    ),
    "snapshot part from itself": ("raft.snapshot_part", ["n1", 5, 9, 1, 0, b"x"], "EINVAL"),
    "meta.query a command": ("meta.query", [["mkdir", 1, b"n", 0o755, 0, 0, 0]], "EINVAL"),
    "paxos.prepare arity": ("paxos.prepare", [], "EINVAL"),
    "paxos.prepare negative ballot": ("paxos.prepare", [[-1, "x"]], "EINVAL"),
    "paxos.prepare bool ballot": ("paxos.prepare", [[True, "x"]], "EINVAL"),
    "paxos.accept arity": ("paxos.accept", [[5, "x"]], "EINVAL"),
    "paxos.accept malformed register": ("paxos.accept", [[5, "x"], [1, None]], "EINVAL"),
    "paxos.accept malformed recent": ("paxos.accept", [[5, "x"], [1, None, [[1, 2]]]], "EINVAL"),
}


@pytest.mark.parametrize(
    ("method", "params", "name"), BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys()
)
async def test_bad_request_gets_an_error_reply(
    node: Node, method: str, params: list[Any], name: str
) -> None:
    before = files_outside_store(node)
    await expect_error(node, method, params, name)
    assert files_outside_store(node) == before


# -- one-way calls: refused with a logged reason, and the connection stays -----------------

VOTE_FROM_N2 = [1, "n2", NODE_ID, 5, 0, 0, False]
BAD_NOTIFICATIONS = {
    "unknown method": ("no.such.method", [], "unknown notification"),
    "raft.message wrong arity": ("raft.message", [VOTE_FROM_N2, None], "takes 1 parameters"),
    "raft.message garbage": ("raft.message", [[99, "x"]], "bad raft message"),
    "raft.message for another node": (
        "raft.message",
        [[1, "n2", "n3", 5, 0, 0, False]],
        "raft message for 'n3'",
    ),
    "snapshot part as a notification": (
        "raft.snapshot_part",
        ["n2", 5, 9, 1, 0, b"x"],
        "unknown notification",
    ),
}


@pytest.mark.parametrize(
    ("method", "params", "reason"), BAD_NOTIFICATIONS.values(), ids=BAD_NOTIFICATIONS.keys()
)
async def test_bad_notification_is_refused_and_logged(
    node: Node,
    method: str,
    params: list[Any],
    reason: str,
    caplog: pytest.LogCaptureFixture,
    expected_logs: list[str],
) -> None:
    expected_logs.append("refused")
    with trio.fail_after(DEADLINE):
        stream, conn = await raw_handshake(node)
        for buffer in conn.send_notification(method, params):
            await stream.send_all(buffer)
        # Handled in order, so once this is answered the notification was refused.
        assert (await raw_call(stream, conn, "node.info", [])).error is None
        await stream.aclose()
    assert any(f"notification {method} from" in w and reason in w for w in server_warnings(caplog))
    await assert_healthy(node)


async def test_raft_message_as_a_request_is_enosys(node: Node) -> None:
    await expect_error(node, "raft.message", [VOTE_FROM_N2], "ENOSYS")
