"""The sans-IO wire protocol: two `Connection` objects wired back to back, no sockets.

Covers the handshake (proofs, refusals, versions), request/response matching by msgid with many
requests in flight, byte-at-a-time feeding, zero-copy encoding of large payloads, and every way a
peer can send malformed or oversized input: each must raise `ProtocolError` (never another
exception) and leave the connection dead.
"""

from __future__ import annotations

import random
import struct
import subprocess
import sys
from collections.abc import Iterable
from typing import Any

import msgpack
import pytest

from ringfs.node.errors import AuthenticationError, ForeignCluster, ProtocolError
from ringfs.node.rpc.protocol import (
    ATTACHMENT,
    MAGIC,
    NONCE_SIZE,
    PROTOCOL_VERSION,
    REQUEST,
    RESPONSE,
    ZERO_COPY_MIN,
    Buffer,
    ClusterIdentity,
    Connection,
    Event,
    HandshakeDone,
    Limits,
    Notification,
    Request,
    Response,
    Role,
    encode,
    parse_message,
    proof,
)

SECRET = b"the cluster secret"
WRONG = b"not the cluster secret"
NODE_ID = "n1"
CLIENT_NONCE = bytes(range(NONCE_SIZE))
SERVER_NONCE = bytes(range(100, 100 + NONCE_SIZE))
MiB = 1024 * 1024


# -- helpers ---------------------------------------------------------------------------------


def wire(buffers: Iterable[Buffer]) -> bytes:
    return b"".join(bytes(buffer) for buffer in buffers)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack_all(data: bytes) -> list[Any]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data)
    return list(unpacker)


def make_pair(
    *,
    client_secret: bytes = SECRET,
    server_secret: bytes = SECRET,
    client_limits: Limits | None = None,
    server_limits: Limits | None = None,
) -> tuple[Connection, Connection]:
    client = Connection(
        Role.CLIENT, client_secret, limits=client_limits or Limits(), nonce=CLIENT_NONCE
    )
    server = Connection(
        Role.SERVER,
        server_secret,
        node_id=NODE_ID,
        limits=server_limits or Limits(),
        nonce=SERVER_NONCE,
    )
    return client, server


def handshake(client: Connection, server: Connection) -> tuple[list[Event], list[Event]]:
    """Move queued handshake bytes both ways until neither side has anything to say."""
    client_events: list[Event] = []
    server_events: list[Event] = []
    for _ in range(10):
        to_server = wire(client.data_to_send())
        if to_server:
            server_events += server.receive_data(to_server)
        to_client = wire(server.data_to_send())
        if to_client:
            client_events += client.receive_data(to_client)
        if not to_server and not to_client:
            break
    return client_events, server_events


def open_pair(**kwargs: Any) -> tuple[Connection, Connection]:
    client, server = make_pair(**kwargs)
    handshake(client, server)
    assert client.is_open
    assert server.is_open
    return client, server


def assert_dead(conn: Connection) -> None:
    """After a protocol error the connection refuses every further use."""
    assert not conn.is_open
    with pytest.raises(ProtocolError):
        conn.receive_data(pack([REQUEST, 0, "node.info", []]))
    with pytest.raises(ProtocolError):
        conn.send_request("node.info", [])
    with pytest.raises(ProtocolError):
        conn.send_notification("hello", [])


def server_after_hello(**kwargs: Any) -> tuple[Connection, Connection, list[Any]]:
    """A pair where the server has answered hello; returns the decoded challenge too."""
    client, server = make_pair(**kwargs)
    server.receive_data(wire(client.data_to_send()))
    challenge_bytes = wire(server.data_to_send())
    (challenge,) = unpack_all(challenge_bytes)
    return client, server, challenge


# -- handshake -------------------------------------------------------------------------------


def test_handshake_completes_both_ways() -> None:
    client, server = make_pair()
    assert not client.is_open
    assert not server.is_open
    client_events, server_events = handshake(client, server)
    assert client_events == [HandshakeDone(peer_id=NODE_ID)]
    assert server_events == [HandshakeDone(peer_id="")]
    assert client.is_open
    assert server.is_open
    assert client.peer_id == NODE_ID
    assert client.data_to_send() == []
    assert server.data_to_send() == []


def test_handshake_messages_have_the_documented_shape() -> None:
    client, server = make_pair()
    (hello,) = unpack_all(wire(client.data_to_send()))
    assert hello == [MAGIC, PROTOCOL_VERSION, "hello", CLIENT_NONCE, ""]
    server.receive_data(pack(hello))
    (challenge,) = unpack_all(wire(server.data_to_send()))
    assert challenge[:4] == [MAGIC, PROTOCOL_VERSION, "challenge", SERVER_NONCE]
    assert challenge[4] == proof(SECRET, b"server", CLIENT_NONCE, SERVER_NONCE)


def test_client_rejects_server_with_wrong_secret() -> None:
    client, server = make_pair(server_secret=WRONG)
    server.receive_data(wire(client.data_to_send()))
    with pytest.raises(AuthenticationError):
        client.receive_data(wire(server.data_to_send()))
    assert client.data_to_send() == []  # no proof of our own is given to an impostor
    assert_dead(client)


def test_server_rejects_client_with_wrong_secret_and_says_why() -> None:
    # An honest client with the wrong secret stops at the server's proof, so the client side
    # here is forged: it ignores the server's proof and answers with its own (wrong) one.
    client, server, challenge = server_after_hello()
    server_nonce = challenge[3]
    forged_proof = proof(WRONG, b"client", server_nonce, CLIENT_NONCE)
    forged = [MAGIC, PROTOCOL_VERSION, "auth", forged_proof, ""]
    with pytest.raises(AuthenticationError):
        server.receive_data(pack(forged))
    refused = unpack_all(wire(server.data_to_send()))
    assert len(refused) == 1
    assert refused[0][:3] == [MAGIC, PROTOCOL_VERSION, "refused"]
    assert isinstance(refused[0][3], str)
    assert refused[0][3]
    assert_dead(server)


def test_client_reports_the_servers_refusal() -> None:
    # A real client waiting for the welcome gets a refusal instead.
    client, server, challenge = server_after_hello()
    client.receive_data(pack(challenge))
    assert unpack_all(wire(client.data_to_send()))[0][2] == "auth"
    refusal = pack([MAGIC, PROTOCOL_VERSION, "refused", "wrong cluster secret"])
    with pytest.raises(AuthenticationError, match="wrong cluster secret"):
        client.receive_data(refusal)
    assert_dead(client)


def test_server_proof_reflected_back_is_refused() -> None:
    client, server, challenge = server_after_hello()
    reflected = [MAGIC, PROTOCOL_VERSION, "auth", challenge[4], ""]
    with pytest.raises(AuthenticationError):
        server.receive_data(pack(reflected))
    assert_dead(server)


# -- client keys -----------------------------------------------------------------------------

KEY_SECRET = b"k" * 32


def keyed_pair(client_key: str, client_secret: bytes) -> tuple[Connection, Connection]:
    """A client with a key, and a server that knows one key: "mount1", of `KEY_SECRET`."""
    client = Connection(Role.CLIENT, client_secret, key=client_key, nonce=CLIENT_NONCE)
    keys = {"mount1": KEY_SECRET}
    server = Connection(Role.SERVER, SECRET, keys=keys.get, node_id=NODE_ID, nonce=SERVER_NONCE)
    return client, server


def test_a_client_key_opens_a_connection_the_server_knows_it_by() -> None:
    client, server = keyed_pair("mount1", KEY_SECRET)
    client_events, server_events = handshake(client, server)
    assert client_events == [HandshakeDone(peer_id=NODE_ID)]
    assert server_events == [HandshakeDone(peer_id="")]
    assert server.key == "mount1"
    assert server.secret == KEY_SECRET


def test_a_node_proves_it_holds_the_keys_secret() -> None:
    client, server = keyed_pair("mount1", KEY_SECRET)
    (hello,) = unpack_all(wire(client.data_to_send()))
    assert hello == [MAGIC, PROTOCOL_VERSION, "hello", CLIENT_NONCE, "mount1"]
    server.receive_data(pack(hello))
    (challenge,) = unpack_all(wire(server.data_to_send()))
    assert challenge[4] == proof(KEY_SECRET, b"server", CLIENT_NONCE, SERVER_NONCE)


def test_the_cluster_secret_does_not_open_a_connection_as_a_key() -> None:
    # A client that names a key must prove that key's secret, whatever else it holds.
    client, server = keyed_pair("mount1", SECRET)
    server.receive_data(wire(client.data_to_send()))
    with pytest.raises(AuthenticationError, match="server did not prove"):
        client.receive_data(wire(server.data_to_send()))
    assert_dead(client)


def test_a_key_not_in_force_is_refused_at_hello_and_told_why() -> None:
    client, server = keyed_pair("mount2", KEY_SECRET)
    with pytest.raises(AuthenticationError, match="no key 'mount2' in force"):
        server.receive_data(wire(client.data_to_send()))
    assert_dead(server)
    with pytest.raises(AuthenticationError, match="never issued, or revoked"):
        client.receive_data(wire(server.data_to_send()))
    assert_dead(client)


def test_a_server_without_keys_refuses_every_key() -> None:
    client = Connection(Role.CLIENT, KEY_SECRET, key="mount1", nonce=CLIENT_NONCE)
    server = Connection(Role.SERVER, SECRET, node_id=NODE_ID)
    with pytest.raises(AuthenticationError, match="no key 'mount1'"):
        server.receive_data(wire(client.data_to_send()))


def test_a_forged_proof_for_a_key_is_refused() -> None:
    client, server = keyed_pair("mount1", KEY_SECRET)
    server.receive_data(wire(client.data_to_send()))
    (challenge,) = unpack_all(wire(server.data_to_send()))
    forged = proof(SECRET, b"client", challenge[3], CLIENT_NONCE)  # the cluster secret's
    with pytest.raises(AuthenticationError, match="the secret of key mount1"):
        server.receive_data(pack([MAGIC, PROTOCOL_VERSION, "auth", forged, ""]))
    (refused,) = unpack_all(wire(server.data_to_send()))
    assert refused[2:] == ["refused", "wrong secret for key mount1"]


def identified_pair(client_cluster: str, server_cluster: str) -> tuple[Connection, Connection]:
    client = Connection(
        Role.CLIENT, SECRET, nonce=CLIENT_NONCE, identity=ClusterIdentity(client_cluster)
    )
    server = Connection(
        Role.SERVER,
        SECRET,
        node_id=NODE_ID,
        nonce=SERVER_NONCE,
        identity=ClusterIdentity(server_cluster),
    )
    return client, server


@pytest.mark.parametrize(("mine", "theirs"), [("c1", "c1"), ("", "c1"), ("c1", ""), ("", "")])
def test_ends_of_one_cluster_or_not_known_yet_connect(mine: str, theirs: str) -> None:
    client, server = identified_pair(mine, theirs)
    handshake(client, server)
    assert client.is_open
    assert server.is_open


def test_a_node_refuses_a_client_of_another_cluster_and_says_why() -> None:
    client, server = identified_pair("c2", "c1")
    server.receive_data(wire(client.data_to_send()))
    client.receive_data(wire(server.data_to_send()))
    with pytest.raises(ForeignCluster, match="a client of cluster c2, not c1"):
        server.receive_data(wire(client.data_to_send()))
    assert_dead(server)
    with pytest.raises(ForeignCluster, match="the node belongs to cluster c1, not c2"):
        client.receive_data(wire(server.data_to_send()))
    assert_dead(client)


def test_a_client_refuses_a_node_of_another_cluster() -> None:
    client, server = identified_pair("c2", "")  # the node does not know its cluster yet
    server.receive_data(wire(client.data_to_send()))
    client.receive_data(wire(server.data_to_send()))
    auth = unpack_all(wire(client.data_to_send()))[0]
    assert (auth[2], auth[4]) == ("auth", "c2")  # the client names its cluster
    forged = pack([MAGIC, PROTOCOL_VERSION, "welcome", NODE_ID, "c1"])
    with pytest.raises(ForeignCluster, match=f"node {NODE_ID} belongs to cluster c1, not c2"):
        client.receive_data(forged)
    assert_dead(client)


def test_server_refuses_other_protocol_version_and_says_why() -> None:
    server = Connection(Role.SERVER, SECRET, node_id=NODE_ID)
    hello = [MAGIC, PROTOCOL_VERSION + 1, "hello", CLIENT_NONCE, ""]
    with pytest.raises(AuthenticationError, match="version"):
        server.receive_data(pack(hello))
    assert_dead(server)
    # The peer is told why, as it is for a wrong secret.
    refused = unpack_all(wire(server.data_to_send()))
    assert [message[2] for message in refused] == ["refused"]
    assert "version" in refused[0][3]


def test_client_refuses_server_of_other_protocol_version() -> None:
    client, _, challenge = server_after_hello()
    challenge[1] = PROTOCOL_VERSION + 1
    with pytest.raises(AuthenticationError, match="version"):
        client.receive_data(pack(challenge))
    assert client.data_to_send() == []
    assert_dead(client)


def test_client_reports_refusal_instead_of_challenge() -> None:
    # A server that refuses right after hello (e.g. the version) answers "refused" where the
    # client expects the challenge; the client must surface the reason, not a shape error.
    client = Connection(Role.CLIENT, SECRET, nonce=CLIENT_NONCE)
    refusal = pack(
        [
            MAGIC,
            PROTOCOL_VERSION,
            "refused",
            f"protocol version {PROTOCOL_VERSION + 1} not supported",
        ]
    )
    with pytest.raises(AuthenticationError, match="not supported"):
        client.receive_data(refusal)
    assert_dead(client)


def test_empty_secret_is_a_usage_error() -> None:
    with pytest.raises(ValueError, match="secret"):
        Connection(Role.CLIENT, b"")


# -- requests and responses ------------------------------------------------------------------


def test_many_requests_in_flight_answered_out_of_order() -> None:
    client, server = open_pair()
    sent: dict[int, int] = {}
    outgoing: list[Buffer] = []
    for n in range(200):
        msgid, buffers = client.send_request("echo", [n, b"x" * n])
        sent[msgid] = n
        outgoing += buffers
    assert len(sent) == 200
    assert client.pending_msgids() == set(sent)

    requests = server.receive_data(wire(outgoing))
    assert [type(event) for event in requests] == [Request] * 200
    assert all(isinstance(r, Request) and r.method == "echo" for r in requests)
    assert server.unanswered == 200

    random.Random(7).shuffle(requests)
    answers: list[Buffer] = []
    for request in requests:
        assert isinstance(request, Request)
        answers += server.send_response(request.msgid, None, request.params)
    assert server.unanswered == 0

    responses = client.receive_data(wire(answers))
    assert [r.msgid for r in responses if isinstance(r, Response)] == [
        r.msgid for r in requests if isinstance(r, Request)
    ]
    for response in responses:
        assert isinstance(response, Response)
        n = sent[response.msgid]
        assert response.error is None
        assert response.result == [n, b"x" * n]
    assert client.pending_msgids() == set()


def test_error_response_round_trip() -> None:
    client, server = open_pair()
    msgid, buffers = client.send_request("block.get", [b"\x00" * 16])
    (request,) = server.receive_data(wire(buffers))
    assert isinstance(request, Request)
    answer = server.send_response(request.msgid, ("ENOENT", "no such block"), None)
    assert client.receive_data(wire(answer)) == [Response(msgid, ("ENOENT", "no such block"), None)]


def test_notifications_both_ways() -> None:
    client, server = open_pair()
    assert server.receive_data(wire(client.send_notification("ping", [1]))) == [
        Notification("ping", [1])
    ]
    assert client.receive_data(wire(server.send_notification("map", [b"m"]))) == [
        Notification("map", [b"m"])
    ]


def _scripted_session(feed: Any) -> tuple[list[Event], list[Event]]:
    """A whole session (handshake, requests, answers, notification); `feed(conn, data)` delivers
    bytes. Returns every event each side saw, in order."""
    client, server = make_pair()
    client_events: list[Event] = []
    server_events: list[Event] = []
    for _ in range(3):
        server_events += feed(server, wire(client.data_to_send()))
        client_events += feed(client, wire(server.data_to_send()))
    assert client.is_open
    assert server.is_open
    outgoing: list[Buffer] = []
    for n in range(5):
        _, buffers = client.send_request("m", [n, "é" * n, b"\x00\xff" * n, {"k": [n]}])
        outgoing += buffers
    outgoing += client.send_notification("note", [None, True, 1.5])
    server_events += feed(server, wire(outgoing))
    answers: list[Buffer] = []
    for event in reversed(server_events):
        if isinstance(event, Request):
            error = ("EIO", "odd") if event.params[0] % 2 else None
            answers += server.send_response(event.msgid, error, event.params)
    client_events += feed(client, wire(answers))
    return client_events, server_events


def test_feeding_one_byte_at_a_time_gives_the_same_events() -> None:
    def all_at_once(conn: Connection, data: bytes) -> list[Event]:
        return conn.receive_data(data) if data else []

    def byte_by_byte(conn: Connection, data: bytes) -> list[Event]:
        events: list[Event] = []
        for i in range(len(data)):
            events += conn.receive_data(data[i : i + 1])
        return events

    whole = _scripted_session(all_at_once)
    bytewise = _scripted_session(byte_by_byte)
    assert bytewise == whole
    client_events, server_events = whole
    assert sum(isinstance(e, Response) for e in client_events) == 5
    assert sum(isinstance(e, Request) for e in server_events) == 5
    assert sum(isinstance(e, Notification) for e in server_events) == 1


# -- large payloads --------------------------------------------------------------------------


def _views_of(buffers: list[Buffer], owner: object) -> list[memoryview]:
    return [b for b in buffers if isinstance(b, memoryview) and b.obj is owner]


def test_encode_passes_large_bin_by_reference() -> None:
    data = random.Random(1).randbytes(4 * MiB)
    block_id, checksum = b"\x01" * 16, b"\x02" * 32
    buffers = encode([REQUEST, 9, "block.put", [block_id, checksum, data]])
    views = _views_of(buffers, data)
    assert len(views) == 1
    assert views[0].nbytes == len(data)
    # The envelope comes first, small, with a placeholder naming the attachment's length;
    # the payload follows it.
    envelope, attachment = buffers
    assert attachment is views[0]
    assert len(envelope) < 256
    assert msgpack.unpackb(envelope, raw=False) == [
        REQUEST,
        9,
        "block.put",
        [block_id, checksum, msgpack.ExtType(ATTACHMENT, struct.pack(">I", len(data)))],
    ]


def test_encode_passes_a_memoryview_over_a_bytearray_by_reference() -> None:
    backing = bytearray(random.Random(2).randbytes(2 * ZERO_COPY_MIN))
    buffers = encode([RESPONSE, 3, None, [memoryview(backing), b"c" * 32]])
    assert len(_views_of(buffers, backing)) == 1


def test_small_payloads_are_not_split() -> None:
    buffers = encode([REQUEST, 1, "block.put", [b"i" * 16, b"c" * 32, b"d" * 100]])
    assert len(buffers) == 1


BIG = bytes(range(256)) * (ZERO_COPY_MIN // 256)
WHERE_ATTACHMENTS_GO = {
    "in the params": ([BIG, 1], 1),
    "an array deeper": ([[1, BIG], "x"], 1),
    "in a tuple": ([(1, BIG)], 1),
    "two arrays deeper: inline": ([[[BIG]]], 0),
    "small bins": ([b"small", [1, b"x" * 100]], 0),
}


@pytest.mark.parametrize(("params", "attachments"), WHERE_ATTACHMENTS_GO.values(),
                         ids=WHERE_ATTACHMENTS_GO.keys())  # fmt: skip
def test_encode_makes_attachments_exactly_where_they_may_be(
    params: list[Any], attachments: int
) -> None:
    client, server = open_pair()
    msgid, buffers = client.send_request("m", params)
    assert len(buffers) == 1 + attachments
    if not attachments:  # plain msgpack, packed whole
        assert buffers == [pack([REQUEST, msgid, "m", params])]
    (request,) = server.receive_data(wire(buffers))
    assert request == Request(msgid, "m", unpack_all(pack(params))[0])


def test_large_block_round_trips_both_ways_without_copy_on_send() -> None:
    client, server = open_pair()
    data = random.Random(3).randbytes(4 * MiB)
    checksum = b"\x07" * 32
    msgid, buffers = client.send_request("block.put", [b"\x01" * 16, checksum, data])
    assert len(_views_of(buffers, data)) == 1
    events: list[Event] = []
    for buffer in buffers:  # written in order, possibly split across reads
        events += server.receive_data(buffer)  # type: ignore[arg-type]
    (request,) = events
    assert isinstance(request, Request)
    assert type(request.params[2]) is bytes
    assert request.params[2] == data

    answer = server.send_response(request.msgid, None, [request.params[2], checksum])
    assert len(_views_of(answer, request.params[2])) == 1
    (response,) = client.receive_data(wire(answer))
    assert isinstance(response, Response)
    assert response.msgid == msgid
    assert response.result == [data, checksum]


def test_pipelined_max_size_blocks_fed_in_shell_sized_reads_are_accepted() -> None:
    # Default limits allow a 16 MiB bin. A client pipelining two such block puts on one
    # connection sends legal frames; the shell feeds them in 1 MiB reads. A frame limit must
    # count one frame, not the bytes of the next frame that arrive in the same read.
    client, server = open_pair()
    data = bytes(Limits().max_bin_len)
    stream = b"".join(
        wire(client.send_request("block.put", [bytes([n]) * 16, b"c" * 32, data])[1])
        for n in range(2)
    )
    events: list[Event] = []
    for start in range(0, len(stream), MiB):
        events += server.receive_data(stream[start : start + MiB])
    assert [e.params[0] for e in events if isinstance(e, Request)] == [b"\x00" * 16, b"\x01" * 16]


def _attachment_stream(client: Connection) -> tuple[bytes, list[Any], list[int]]:
    """Requests with and without attachments, back to back: their wire bytes, their params
    and the wire size of each."""
    rng = random.Random(4)
    params = [
        [b"\x01" * 16, rng.randbytes(ZERO_COPY_MIN + 3)],
        ["small", 7],
        # Two attachments, one of them a level deeper, with small values after each.
        [rng.randbytes(2 * ZERO_COPY_MIN), [b"id", rng.randbytes(ZERO_COPY_MIN), 5], "end"],
        [rng.randbytes(3 * ZERO_COPY_MIN + 1)],
    ]
    messages = [wire(client.send_request("m", p)[1]) for p in params]
    return b"".join(messages), params, [len(m) for m in messages]


@pytest.mark.parametrize("split", ["whole", "64 KiB", "random", "bytewise"])
def test_attachments_arrive_whole_however_the_stream_is_split(split: str) -> None:
    client, server = open_pair()
    stream, params, sizes = _attachment_stream(client)
    cuts = {
        "whole": [0],
        "64 KiB": list(range(0, len(stream), ZERO_COPY_MIN)),
        "random": sorted(random.Random(5).sample(range(1, len(stream)), 200) + [0]),
        "bytewise": list(range(len(stream))),
    }[split]
    events: list[Event] = []
    for start, end in zip(cuts, [*cuts[1:], len(stream)], strict=True):
        events += server.receive_data(stream[start:end])
        if events:
            # Until a message is complete, its attachments' bytes count as buffered.
            assert server.buffered == end - sum(sizes[: len(events)])
    assert [e.params for e in events if isinstance(e, Request)] == params
    assert [e.size for e in events if isinstance(e, Request)] == sizes
    assert type(events[0].params[1]) is bytes  # type: ignore[union-attr]
    assert server.buffered == 0


def test_an_answer_carries_an_attachment_back() -> None:
    client, server = open_pair()
    msgid, buffers = client.send_request("block.get", [b"\x01" * 16])
    (request,) = server.receive_data(wire(buffers))
    data = random.Random(6).randbytes(ZERO_COPY_MIN)
    (response,) = client.receive_data(wire(server.send_response(msgid, None, data)))
    assert response == Response(msgid, None, data)


def _placeholder(length: int, code: int = ATTACHMENT) -> bytes:
    return struct.pack(">BbI", 0xD6, code, length)


def test_an_attachment_over_the_bin_limit_is_refused_at_its_placeholder() -> None:
    _, server = open_pair()
    envelope = pack([REQUEST, 1, "m", []])[:-1] + b"\x91" + _placeholder(100 * MiB)
    with pytest.raises(ProtocolError, match="attachment"):
        server.receive_data(envelope)
    assert_dead(server)


def test_attachments_over_the_frame_limit_are_refused_at_the_envelope() -> None:
    limits = Limits(max_frame=3 * ZERO_COPY_MIN, max_bin_len=2 * ZERO_COPY_MIN)
    client, server = open_pair(client_limits=limits, server_limits=limits)
    data = bytes(2 * ZERO_COPY_MIN)
    _, buffers = client.send_request("m", [data, data])
    with pytest.raises(ProtocolError, match="over"):
        server.receive_data(buffers[0])  # the envelope alone: nothing of the payload yet
    assert_dead(server)


PLACEHOLDERS_OUT_OF_PLACE = {
    "in a map": pack([REQUEST, 1, "m", []])[:-1] + b"\x91\x81\xa1k" + _placeholder(10),
    "four arrays deep": pack([REQUEST, 1, "m", []])[:-1] + b"\x91\x91\x91" + _placeholder(10),
    "another ext type": pack([REQUEST, 1, "m", []])[:-1] + b"\x91" + _placeholder(10, code=2),
    "empty": pack([REQUEST, 1, "m", []])[:-1] + b"\x91" + _placeholder(0),
}


@pytest.mark.parametrize("envelope", PLACEHOLDERS_OUT_OF_PLACE.values(),
                         ids=PLACEHOLDERS_OUT_OF_PLACE.keys())  # fmt: skip
def test_a_placeholder_where_encode_puts_none_is_refused(envelope: bytes) -> None:
    _, server = open_pair()
    with pytest.raises(ProtocolError):
        server.receive_data(envelope + bytes(10))
    assert_dead(server)


def test_a_placeholder_before_the_handshake_is_refused() -> None:
    server = Connection(Role.SERVER, SECRET, node_id=NODE_ID)
    with pytest.raises(ProtocolError):
        server.receive_data(b"\x91" + _placeholder(10) + bytes(10))
    assert_dead(server)


# -- malformed and oversized input -----------------------------------------------------------

GARBAGE = {
    "never-used byte": b"\xc1",
    "http": b"GET / HTTP/1.1\r\nHost: node\r\n\r\n",
    "ext type": b"\xd4\x01\x02",
    "int map key": b"\x81\x01\x02",
    "nesting too deep": b"\x91" * 5000,
}


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
def test_garbage_before_handshake(garbage: bytes) -> None:
    server = Connection(Role.SERVER, SECRET, node_id=NODE_ID)
    with pytest.raises(ProtocolError):
        server.receive_data(garbage)
    assert_dead(server)


@pytest.mark.parametrize("garbage", GARBAGE.values(), ids=GARBAGE.keys())
@pytest.mark.parametrize("side", ["client", "server"])
def test_garbage_after_handshake(garbage: bytes, side: str) -> None:
    client, server = open_pair()
    conn = client if side == "client" else server
    with pytest.raises(ProtocolError):
        conn.receive_data(garbage)
    assert_dead(conn)


def test_truncated_handshake_bytes_wait_for_more() -> None:
    # Half a hello is not an error yet: the shell's handshake deadline deals with a peer that
    # never finishes. Nothing is answered meanwhile.
    client, server = make_pair()
    hello = wire(client.data_to_send())
    assert server.receive_data(hello[: len(hello) // 2]) == []
    assert server.data_to_send() == []
    assert not server.is_open
    assert server.receive_data(hello[len(hello) // 2 :]) == []
    assert len(server.data_to_send()) == 1


TRUNCATED_HELLO = {
    "no nonce": [MAGIC, PROTOCOL_VERSION, "hello"],
    "no key": [MAGIC, PROTOCOL_VERSION, "hello", CLIENT_NONCE],
    "short nonce": [MAGIC, PROTOCOL_VERSION, "hello", CLIENT_NONCE[:16], ""],
    "str nonce": [MAGIC, PROTOCOL_VERSION, "hello", "x" * NONCE_SIZE, ""],
    "key not a str": [MAGIC, PROTOCOL_VERSION, "hello", CLIENT_NONCE, b"k"],
    "key none": [MAGIC, PROTOCOL_VERSION, "hello", CLIENT_NONCE, None],
    "key too long": [MAGIC, PROTOCOL_VERSION, "hello", CLIENT_NONCE, "k" * 65],
    "magic only": [MAGIC],
    "empty": [],
    "wrong magic": ["ringfz", PROTOCOL_VERSION, "hello", CLIENT_NONCE, ""],
    "auth first": [MAGIC, PROTOCOL_VERSION, "auth", b"p" * 32],
}


@pytest.mark.parametrize("hello", TRUNCATED_HELLO.values(), ids=TRUNCATED_HELLO.keys())
def test_malformed_hello(hello: list[Any]) -> None:
    server = Connection(Role.SERVER, SECRET, node_id=NODE_ID)
    with pytest.raises(ProtocolError):
        server.receive_data(pack(hello))
    assert_dead(server)


def test_truncated_challenge_and_welcome() -> None:
    client, _, challenge = server_after_hello()
    with pytest.raises(ProtocolError):
        client.receive_data(pack(challenge[:4]))
    assert_dead(client)

    client, _, challenge = server_after_hello()
    challenge[4] = challenge[4][:16]
    with pytest.raises(ProtocolError):
        client.receive_data(pack(challenge))
    assert_dead(client)

    client, _, challenge = server_after_hello()
    client.receive_data(pack(challenge))
    with pytest.raises(ProtocolError):
        client.receive_data(pack([MAGIC, PROTOCOL_VERSION, "welcome"]))
    assert_dead(client)


def test_truncated_auth() -> None:
    _, server, _ = server_after_hello()
    with pytest.raises(ProtocolError):
        server.receive_data(pack([MAGIC, PROTOCOL_VERSION, "auth"]))
    assert_dead(server)


SMALL = Limits(max_frame=4096, max_bin_len=4096, max_str_len=64, max_array_len=8, max_map_len=4)


def _small_pair() -> tuple[Connection, Connection]:
    return open_pair(client_limits=SMALL, server_limits=SMALL)


def test_frame_just_under_the_limit_is_accepted() -> None:
    client, server = _small_pair()
    _, buffers = client.send_request("put", [b"x" * 3900])
    assert len(server.receive_data(wire(buffers))) == 1


@pytest.mark.parametrize("chunk", [None, 1000, 1])
def test_frame_over_max_frame(chunk: int | None) -> None:
    client, server = _small_pair()
    _, buffers = client.send_request("put", [b"x" * 10_000])
    data = wire(buffers)
    pieces = [data] if chunk is None else [data[i : i + chunk] for i in range(0, len(data), chunk)]

    def feed_all() -> None:
        for piece in pieces:
            server.receive_data(piece)

    with pytest.raises(ProtocolError):
        feed_all()
    assert_dead(server)


def test_many_small_frames_in_one_read_larger_than_max_frame() -> None:
    # Each frame is tiny; only the read (what the shell got from one receive) is large.
    client, server = _small_pair()
    data = b"".join(wire(client.send_request("m", [n])[1]) for n in range(2000))
    assert len(data) > SMALL.max_frame
    assert len(server.receive_data(data)) == 2000


def test_bin_length_claimed_over_the_limit_is_refused_at_the_header() -> None:
    # The header says 100 MiB; the limit is known the moment the header arrives, so the
    # connection must not wait for (and buffer) max_frame bytes before refusing it.
    _, server = open_pair()
    header = b"\xc6" + struct.pack(">I", 100 * MiB)
    with pytest.raises(ProtocolError):
        server.receive_data(header + b"x" * 1000)
    assert_dead(server)


def test_bin_longer_than_max_bin_len() -> None:
    limits = Limits(max_frame=64 * 1024, max_bin_len=1024)
    client, server = open_pair(client_limits=limits, server_limits=limits)
    _, buffers = client.send_request("put", [b"x" * 2000])
    with pytest.raises(ProtocolError):
        server.receive_data(wire(buffers))
    assert_dead(server)


def test_str_longer_than_max_str_len() -> None:
    client, server = _small_pair()
    _, buffers = client.send_request("m" * 100, [])
    with pytest.raises(ProtocolError):
        server.receive_data(wire(buffers))
    assert_dead(server)


def test_array_longer_than_max_array_len() -> None:
    client, server = _small_pair()
    _, buffers = client.send_request("m", list(range(100)))
    with pytest.raises(ProtocolError):
        server.receive_data(wire(buffers))
    assert_dead(server)


def test_map_longer_than_max_map_len() -> None:
    client, server = _small_pair()
    _, buffers = client.send_request("m", [{str(n): n for n in range(6)}])
    with pytest.raises(ProtocolError):
        server.receive_data(wire(buffers))
    assert_dead(server)


def test_oversized_reply_kills_the_client_side_too() -> None:
    client, server = _small_pair()
    _, buffers = client.send_request("m", [])
    (request,) = server.receive_data(wire(buffers))
    answer = server.send_response(request.msgid, ("EIO", "d" * 200), None)  # type: ignore[union-attr]
    with pytest.raises(ProtocolError):
        client.receive_data(wire(answer))
    assert_dead(client)


BAD_TO_SERVER = {
    "int": 5,
    "str": "hello",
    "bin": b"hello",
    "map": {"a": 1},
    "nil": None,
    "empty array": [],
    "bad kind": [7, 1, "m", []],
    "kind as str": ["0", 1, "m", []],
    "request arity 3": [REQUEST, 1, "m"],
    "request arity 5": [REQUEST, 1, "m", [], None],
    "negative msgid": [REQUEST, -1, "m", []],
    "msgid too large": [REQUEST, 2**32, "m", []],
    "bool msgid": [REQUEST, True, "m", []],
    "float msgid": [REQUEST, 1.0, "m", []],
    "str msgid": [REQUEST, "1", "m", []],
    "int method": [REQUEST, 1, 5, []],
    "bin method": [REQUEST, 1, b"m", []],
    "params not array": [REQUEST, 1, "m", {"a": 1}],
    "response to unknown msgid": [RESPONSE, 0, None, None],
    "notification arity": [2, "m"],
    "notification int method": [2, 1, []],
}


@pytest.mark.parametrize("message", BAD_TO_SERVER.values(), ids=BAD_TO_SERVER.keys())
def test_wrong_message_shape_to_server(message: Any) -> None:
    _, server = open_pair()
    with pytest.raises(ProtocolError):
        server.receive_data(pack(message))
    assert_dead(server)


BAD_TO_CLIENT = {
    "request sent to a client": [REQUEST, 0, "m", []],
    "response to unknown msgid": [RESPONSE, 999, None, None],
    "negative msgid": [RESPONSE, -1, None, None],
    "response arity": [RESPONSE, 0, None],
    "error is str": [RESPONSE, 0, "ENOENT", None],
    "error arity 1": [RESPONSE, 0, ["ENOENT"], None],
    "error detail not str": [RESPONSE, 0, ["ENOENT", 5], None],
    "error name bin": [RESPONSE, 0, [b"ENOENT", ""], None],
}


@pytest.mark.parametrize("message", BAD_TO_CLIENT.values(), ids=BAD_TO_CLIENT.keys())
def test_wrong_message_shape_to_client(message: Any) -> None:
    client, _ = open_pair()
    msgid, _ = client.send_request("m", [])  # msgid 0 is pending
    assert msgid == 0
    with pytest.raises(ProtocolError):
        client.receive_data(pack(message))
    assert_dead(client)


def test_parse_message_only_raises_protocol_error() -> None:
    samples = [*BAD_TO_SERVER.values(), [RESPONSE, 0, [1, 2], None], [None], [[], [], [], []]]
    for sample in samples:
        if sample == [RESPONSE, 0, None, None]:
            continue  # well formed; only unknown to a connection
        with pytest.raises(ProtocolError):
            parse_message(sample)


def test_good_messages_in_the_same_read_before_a_bad_one_do_not_survive() -> None:
    # The read is rejected as a whole and the connection is dead: nothing half-processed.
    client, server = open_pair()
    _, good = client.send_request("m", [])
    with pytest.raises(ProtocolError):
        server.receive_data(wire(good) + pack([7]))
    assert_dead(server)


def test_response_to_abandoned_msgid_is_dropped() -> None:
    client, server = open_pair()
    gone, buffers = client.send_request("slow", [])
    kept, more = client.send_request("fast", [])
    requests = server.receive_data(wire(buffers) + wire(more))
    client.abandon(gone)
    assert client.pending_msgids() == {kept}
    late = server.send_response(requests[0].msgid, None, "late")  # type: ignore[union-attr]
    assert client.receive_data(wire(late)) == []
    assert client.is_open
    answer = server.send_response(requests[1].msgid, None, "ok")  # type: ignore[union-attr]
    assert client.receive_data(wire(answer)) == [Response(kept, None, "ok")]
    # A second answer to the abandoned msgid is a peer bug like any unknown msgid.
    with pytest.raises(ProtocolError):
        client.receive_data(wire(server.send_response(gone, None, "again")))
    assert_dead(client)


def test_abandoning_an_answered_or_unknown_msgid_is_harmless() -> None:
    client, server = open_pair()
    msgid, buffers = client.send_request("m", [])
    (request,) = server.receive_data(wire(buffers))
    client.receive_data(wire(server.send_response(msgid, None, 1)))
    client.abandon(msgid)
    client.abandon(12345)
    # The msgid was answered, not abandoned: an extra answer is still an error.
    with pytest.raises(ProtocolError):
        client.receive_data(wire(server.send_response(msgid, None, 1)))
    assert isinstance(request, Request)


def test_request_before_hello_is_refused() -> None:
    server = Connection(Role.SERVER, SECRET, node_id=NODE_ID)
    with pytest.raises(ProtocolError):
        server.receive_data(pack([REQUEST, 0, "block.get", [b"\x00" * 16]]))
    assert server.data_to_send() == []
    assert_dead(server)


def test_request_between_hello_and_auth_is_refused() -> None:
    client, server = make_pair()
    server.receive_data(wire(client.data_to_send()))
    server.data_to_send()
    with pytest.raises(ProtocolError):
        server.receive_data(pack([REQUEST, 0, "block.get", [b"\x00" * 16]]))
    assert_dead(server)


def test_request_pipelined_with_hello_is_refused() -> None:
    client, server = make_pair()
    data = wire(client.data_to_send()) + pack([REQUEST, 0, "node.info", []])
    with pytest.raises(ProtocolError):
        server.receive_data(data)
    assert_dead(server)


def test_sending_before_the_handshake_finished_is_refused() -> None:
    client, server = make_pair()
    with pytest.raises(ProtocolError):
        client.send_request("node.info", [])
    with pytest.raises(ProtocolError):
        client.send_notification("n", [])
    with pytest.raises(ProtocolError):
        server.send_response(0, None, None)
    # Refusing to send did not break the handshake.
    handshake(client, server)
    assert client.is_open
    assert server.is_open


# -- layering --------------------------------------------------------------------------------


def test_protocol_and_ring_do_not_import_trio_or_pyfuse3() -> None:
    code = (
        "import sys, ringfs.node.rpc.protocol, ringfs.node.cluster.ring\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'pyfuse3')))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"
