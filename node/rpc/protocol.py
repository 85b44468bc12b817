"""The ringfs wire protocol, sans-IO: bytes in, messages out; messages in, buffers out.

A connection is a TCP stream of msgpack objects. It opens with a mutual challenge-response
(HMAC-SHA256) on the cluster secret, which nodes hold, or on the secret of a client key the
client names (`ringfs.node.cluster.keys`), and then carries msgpack-RPC messages:

    request       [0, msgid, method, params]
    response      [1, msgid, error, result]     error is None or [name, detail]
    notification  [2, method, params]

A buffer of `ZERO_COPY_MIN` bytes or more in a message travels as an *attachment*: the envelope
holds a placeholder (ext type `ATTACHMENT`, its length) and the raw bytes follow the envelope.
Neither end copies it through msgpack: the sender writes the caller's buffer, the receiver joins
the pieces it received.

Many requests are in flight at once, matched by msgid. This module owns every protocol rule:
framing limits, message shapes, handshake order and proofs, msgid bookkeeping. The trio shells in
`client.py` and `server.py` only move bytes. Nothing here imports trio.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import msgpack

from ringfs.node.errors import AuthenticationError, ForeignCluster, ProtocolError

PROTOCOL_VERSION = 18
MAGIC = "ringfs"
REQUEST, RESPONSE, NOTIFICATION = 0, 1, 2
NONCE_SIZE = 32
# A buffer at least this long travels as an attachment, after its message's envelope.
ZERO_COPY_MIN = 64 * 1024
# The msgpack ext type of an attachment's placeholder; its data is the length (uint32).
ATTACHMENT = 1
# msgids wrap at 2**32 so they always pack as a uint32.
MSGID_MODULUS = 2**32
# Received bytes are fed to the unpacker in slices of this size, draining complete messages in
# between, so the buffer limit bounds one message (plus one slice), not one read.
FEED_SLICE = 64 * 1024
# The handshake messages are small; an unauthenticated peer may not make us buffer more.
HANDSHAKE_MAX = 1024
# First bytes of a msgpack array header: every message, handshake included, is an array.
_ARRAY_HEADERS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}

Buffer = bytes | bytearray | memoryview


@dataclass(frozen=True)
class Limits:
    """Every size a peer can make us hold in memory, made explicit."""

    # One message: a 16 MiB block (the largest chunk size) plus envelope.
    max_frame: int = 16 * 1024 * 1024 + 64 * 1024
    max_bin_len: int = 16 * 1024 * 1024
    # Names are at most 255 bytes and paths 4 KiB; strings are method names and details.
    max_str_len: int = 64 * 1024
    # A chunk commit or a directory page lists at most this many items.
    max_array_len: int = 100_000
    max_map_len: int = 1024
    # Requests a server runs at once for one connection; it stops reading beyond that.
    max_in_flight: int = 64


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Request:
    msgid: int
    method: str
    params: list[Any]
    # Its bytes on the wire, as received (0 for one built here): what it costs to hold.
    size: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Response:
    msgid: int
    error: tuple[str, str] | None
    result: Any


@dataclass(frozen=True)
class Notification:
    method: str
    params: list[Any]


@dataclass(frozen=True)
class HandshakeDone:
    """Both sides proved they hold the secret; `peer_id` names the server (empty on the server)."""

    peer_id: str


Event = Request | Response | Notification | HandshakeDone


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class _State(enum.Enum):
    # Client: sent hello, waits for the server's challenge and proof.
    AWAIT_CHALLENGE = enum.auto()
    # Client: sent its proof, waits for the welcome.
    AWAIT_WELCOME = enum.auto()
    # Server: waits for hello.
    AWAIT_HELLO = enum.auto()
    # Server: sent challenge, waits for the client's proof.
    AWAIT_AUTH = enum.auto()
    OPEN = enum.auto()
    CLOSED = enum.auto()


def proof(secret: bytes, label: bytes, first: bytes, second: bytes) -> bytes:
    """HMAC-SHA256 over a role label and both nonces; labels stop reflecting a proof back."""
    return hmac.new(secret, label + first + second, hashlib.sha256).digest()


def _placeholder(length: int) -> bytes:
    """A fixext 4 of type `ATTACHMENT` holding the attachment's length."""
    return struct.pack(">BbI", 0xD6, ATTACHMENT, length)


def _array_header(length: int) -> bytes:
    if length < 16:
        return bytes([0x90 | length])
    if length < 2**16:
        return struct.pack(">BH", 0xDC, length)
    return struct.pack(">BI", 0xDD, length)


#: How deep in a message's arrays an attachment may sit: the envelope, its params or result,
#: and one more array.
ATTACHMENT_DEPTH = 3


# What may be an attachment, and what `encode` walks into, as tuples: isinstance takes them
# faster than the unions they equal.
_BUFFERS = (bytes, bytearray, memoryview)
_ARRAYS = (list, tuple)


class _Encoder:
    """Packs a message into its envelope and its attachments, passing those by reference.

    Arrays are walked `ATTACHMENT_DEPTH` levels deep; any large `bytes`/`memoryview` found there
    becomes a placeholder in the envelope, and the payload itself follows it, so a 4 MiB block
    is never copied into the packer.
    """

    def __init__(self) -> None:
        self._packer = msgpack.Packer(use_bin_type=True, autoreset=True)
        self._envelope = bytearray()
        self._attachments: list[Buffer] = []

    def add(self, obj: Any, depth: int) -> None:
        if isinstance(obj, _ARRAYS) and depth > 0:
            self._envelope += _array_header(len(obj))
            for item in obj:
                self.add(item, depth - 1)
        elif isinstance(obj, _BUFFERS) and len(obj) >= ZERO_COPY_MIN:
            view = memoryview(obj).cast("B")
            self._envelope += _placeholder(len(view))
            self._attachments.append(view)
        else:
            self._envelope += self._packer.pack(obj)

    def finish(self) -> list[Buffer]:
        return [bytes(self._envelope), *self._attachments]


def _holds_attachment(items: list[Any] | tuple[Any, ...], depth: int) -> bool:
    """Whether `_Encoder` would find an attachment among `items`, walked `depth` levels deep."""
    for item in items:
        if type(item) is int:
            continue  # the most common item, told apart fastest
        if isinstance(item, _BUFFERS):
            if len(item) >= ZERO_COPY_MIN:
                return True
        elif depth > 1 and isinstance(item, _ARRAYS) and _holds_attachment(item, depth - 1):
            return True
    return False


def encode(message: list[Any]) -> list[Buffer]:
    """Encode one message to buffers to be written in order (large payloads not copied).

    Most messages have no attachment: msgpack packs them whole, in a tenth of the time the
    `_Encoder`'s walk takes, to the same bytes."""
    if not _holds_attachment(message, ATTACHMENT_DEPTH):
        return [msgpack.packb(message, use_bin_type=True)]
    encoder = _Encoder()
    encoder.add(message, depth=ATTACHMENT_DEPTH)
    return encoder.finish()


#: What an attachment's placeholder decodes to, until its bytes take its place.
_ATTACHED = object()


class _Attachments:
    """The attachments of one received envelope: their bytes gathered by reference as they
    arrive, and joined once each."""

    def __init__(self, envelope: Any, lengths: list[int]) -> None:
        self.envelope = envelope
        self.missing = sum(lengths)
        self._lengths = lengths
        self._joined: list[bytes] = []
        self._pieces: list[Buffer] = []
        self._have = 0

    def add(self, data: Buffer) -> None:
        """Take bytes that follow the envelope (at most `missing`)."""
        view = memoryview(data)
        self.missing -= len(view)
        while view:
            piece = view[: self._lengths[len(self._joined)] - self._have]
            self._pieces.append(piece)
            self._have += len(piece)
            view = view[len(piece) :]
            if self._have == self._lengths[len(self._joined)]:
                self._joined.append(b"".join(self._pieces))
                self._pieces, self._have = [], 0

    def message(self) -> Any:
        """The envelope with each placeholder replaced by its bytes, once all have arrived."""
        joined = iter(self._joined)
        message = _put_back(self.envelope, joined, ATTACHMENT_DEPTH)
        if next(joined, None) is not None:
            raise ProtocolError("an attachment's placeholder where none may be")
        return message


def _put_back(obj: Any, joined: Iterator[bytes], depth: int) -> Any:
    """`obj` with the placeholders where `encode` puts them replaced, in order, by `joined`."""
    if obj is _ATTACHED:
        return next(joined)
    if isinstance(obj, list) and depth > 0:
        return [_put_back(item, joined, depth - 1) for item in obj]
    return obj


def _describe(value: Any) -> str:
    """A short, safe description of a value from a peer (never the text of a huge value)."""
    if isinstance(value, int | float | bool) or value is None:
        return repr(value)[:20]
    if isinstance(value, str) and len(value) <= 40:
        return repr(value)
    return f"<{type(value).__name__}>"


def is_natural(value: object) -> TypeGuard[int]:
    """Whether a decoded value is a natural number (msgpack bools are not numbers here)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_msgid(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < MSGID_MODULUS:
        raise ProtocolError(f"bad msgid {_describe(value)}")
    return value


def parse_message(obj: Any, size: int = 0) -> Request | Response | Notification:
    """Validate the shape of one decoded RPC message (`size`: a request's bytes on the wire)."""
    if not isinstance(obj, list) or not obj:
        raise ProtocolError("message is not a non-empty array")
    kind = obj[0]
    if kind == REQUEST and len(obj) == 4:
        _, msgid, method, params = obj
        if not isinstance(method, str) or not isinstance(params, list):
            raise ProtocolError("request needs a method name and a params array")
        return Request(_check_msgid(msgid), method, params, size)
    if kind == RESPONSE and len(obj) == 4:
        _, msgid, error, result = obj
        if error is not None:
            if not (
                isinstance(error, list)
                and len(error) == 2
                and all(isinstance(part, str) for part in error)
            ):
                raise ProtocolError("response error must be None or [name, detail]")
            return Response(_check_msgid(msgid), (error[0], error[1]), result)
        return Response(_check_msgid(msgid), None, result)
    if kind == NOTIFICATION and len(obj) == 3:
        _, method, params = obj
        if not isinstance(method, str) or not isinstance(params, list):
            raise ProtocolError("notification needs a method name and a params array")
        return Notification(method, params)
    raise ProtocolError(f"unknown message kind {_describe(obj[0])} or arity {len(obj)}")


#: Finds the secret of a client key by its name: None if no such key is in force.
KeyLookup = Callable[[str], bytes | None]
#: The longest key name a hello may carry.
KEY_NAME_MAX = 64


@dataclass
class ClusterIdentity:
    """The id of the cluster this end belongs to, "" until it is known (a node learns it once
    the cluster map is agreed, a mount from the first map it fetches). Shared by the
    connections of one node or mount: once known, a peer of another cluster is refused."""

    cluster_id: str = ""

    def foreign(self, peer_cluster: str) -> bool:
        return bool(self.cluster_id and peer_cluster and peer_cluster != self.cluster_id)


#: How a refusal for a peer of another cluster starts (see `Connection._expect`).
_FOREIGN = "cluster "


class Connection:
    """One end of a ringfs connection: handshake, framing and msgid bookkeeping.

    Feed received bytes to `receive_data`; it returns the events they complete and queues any
    handshake reply in `data_to_send()`. Raises `ProtocolError` (or `AuthenticationError`) when the
    peer misbehaves; the connection is then dead and must be closed.

    A client proves it holds `secret`: the cluster secret, or the secret of the client key it
    names (`key`). A server holds the cluster secret and finds a key's secret with `keys`
    (without it, only the cluster secret is taken); `key` then names the client's key.
    """

    def __init__(
        self,
        role: Role,
        secret: bytes,
        *,
        key: str = "",
        keys: KeyLookup | None = None,
        node_id: str = "",
        limits: Limits = DEFAULT_LIMITS,
        nonce: bytes | None = None,
        identity: ClusterIdentity | None = None,
    ) -> None:
        if not secret:
            raise ValueError("the cluster secret must not be empty")
        self.role = role
        self.limits = limits
        self.peer_id = ""
        self.key = key
        self._keys = keys
        self._secret = secret
        self._node_id = node_id
        self._identity = identity if identity is not None else ClusterIdentity()
        self._nonce = nonce if nonce is not None else os.urandom(NONCE_SIZE)
        self._peer_nonce = b""
        self._outgoing: list[Buffer] = []
        self._next_msgid = 0
        self._pending: set[int] = set()
        self._abandoned: set[int] = set()
        self._unanswered = 0
        # Stream offsets: bytes received, and the end of the last complete message (the
        # unpacker's own tell() moves inside a message it has started, and it never sees the
        # `_skipped` bytes of attachments taken straight from what was received).
        self._fed = 0
        self._boundary = 0
        self._skipped = 0
        # Lengths of the attachments the envelope being decoded names, and the attachments
        # of a decoded envelope while they arrive.
        self._lengths: list[int] = []
        self._attaching: _Attachments | None = None
        self._unpacker = msgpack.Unpacker(
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_buffer_size=limits.max_frame + FEED_SLICE,
            max_bin_len=limits.max_bin_len,
            max_str_len=limits.max_str_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=4,
            ext_hook=self._placeholder,
        )
        if role is Role.CLIENT:
            self._state = _State.AWAIT_CHALLENGE
            self._queue([MAGIC, PROTOCOL_VERSION, "hello", self._nonce, key])
        else:
            self._state = _State.AWAIT_HELLO

    # -- state -------------------------------------------------------------------------------

    @property
    def is_open(self) -> bool:
        return self._state is _State.OPEN

    @property
    def secret(self) -> bytes:
        """The secret the handshake proves (a server: proved, once open): the cluster
        secret, or that of the client key `key`."""
        return self._secret

    @property
    def buffered(self) -> int:
        """Bytes received of a message not complete yet."""
        return self._fed - self._boundary

    @property
    def partial_frame(self) -> int | None:
        """Stream offset where an incomplete received message starts, or None if there is none.

        The offset tells one unfinished message from the next, for deadlines per message.
        """
        return self._boundary if self._fed > self._boundary else None

    @property
    def unanswered(self) -> int:
        """Requests received by a server and not yet answered (for back-pressure)."""
        return self._unanswered

    def data_to_send(self) -> list[Buffer]:
        """Handshake bytes queued by the state machine, to be written before anything else."""
        out, self._outgoing = self._outgoing, []
        return out

    def _queue(self, message: list[Any]) -> None:
        self._outgoing.extend(encode(message))

    # -- receiving ---------------------------------------------------------------------------

    def receive_data(self, data: Buffer) -> list[Event]:
        """Feed bytes from the peer; return the events they complete."""
        if self._state is _State.CLOSED:
            raise ProtocolError("connection is closed")
        objects: list[tuple[Any, int]] = []  # each with its size on the wire
        view = memoryview(data)
        position = 0
        try:
            while position < len(view):
                base = self._fed
                if self._attaching is not None:
                    piece = view[position : position + self._attaching.missing]
                    self._attaching.add(piece)
                    self._skipped += len(piece)
                else:
                    piece = view[position : position + FEED_SLICE]
                    self._unpacker.feed(piece)
                self._fed += len(piece)
                position += len(piece)
                self._drain(objects)
                self._check_frame_start(piece, base)
                if self._state is not _State.OPEN and self._fed - self._boundary > HANDSHAKE_MAX:
                    raise ProtocolError("handshake message too large")
        except (msgpack.UnpackException, ValueError, TypeError) as exc:
            self._state = _State.CLOSED
            raise ProtocolError(f"undecodable input: {type(exc).__name__}: {exc}") from exc
        except ProtocolError:
            self._state = _State.CLOSED
            raise
        events: list[Event] = []
        try:
            for obj, size in objects:
                event = self._receive_object(obj, size)
                if event is not None:
                    events.append(event)
        except ProtocolError:
            self._state = _State.CLOSED
            raise
        return events

    def _drain(self, objects: list[tuple[Any, int]]) -> None:
        """Take every message the bytes received so far complete, with its attachments."""
        unpacker = self._unpacker
        while True:
            if self._attaching is not None:
                # Bytes fed to the unpacker past the envelope: its attachments' first ones.
                unread = self._fed - self._skipped - unpacker.tell()
                if unread:
                    self._attaching.add(unpacker.read_bytes(min(unread, self._attaching.missing)))
                if self._attaching.missing:
                    return
                message, self._attaching = self._attaching.message(), None
                self._complete(message, objects)
                continue
            for obj in unpacker:
                if self._lengths:
                    size = unpacker.tell() + self._skipped - self._boundary + sum(self._lengths)
                    if size > self.limits.max_frame:
                        raise ProtocolError(
                            f"message of {size} bytes, over {self.limits.max_frame}"
                        )
                    self._attaching = _Attachments(obj, self._lengths)
                    self._lengths = []
                    break  # what follows the envelope is its attachments, not msgpack
                self._complete(obj, objects)
            else:
                return

    def _complete(self, message: Any, objects: list[tuple[Any, int]]) -> None:
        end = self._unpacker.tell() + self._skipped
        objects.append((message, end - self._boundary))
        self._boundary = end

    def _placeholder(self, code: int, data: bytes) -> object:
        """The unpacker's hook for ext types: only an attachment's placeholder is one, once
        the connection is open, for an attachment the limits allow."""
        if code != ATTACHMENT or len(data) != 4 or self._state is not _State.OPEN:
            raise ProtocolError(f"ext type {code} of {len(data)} bytes")
        (length,) = struct.unpack(">I", data)
        if not 0 < length <= self.limits.max_bin_len:
            raise ProtocolError(f"attachment of {length} bytes, limit {self.limits.max_bin_len}")
        self._lengths.append(length)
        return _ATTACHED

    def _check_frame_start(self, piece: memoryview, base: int) -> None:
        """Refuse a message that does not start as an array as soon as its first byte arrives."""
        start = self._boundary
        if base <= start < self._fed and piece[start - base] not in _ARRAY_HEADERS:
            raise ProtocolError(
                f"message starts with byte 0x{piece[start - base]:02x}, not an array"
            )

    def _receive_object(self, obj: Any, size: int) -> Event | None:
        if self._state is not _State.OPEN:
            return self._handshake(obj)
        message = parse_message(obj, size)
        if isinstance(message, Request):
            if self.role is not Role.SERVER:
                raise ProtocolError("a client does not serve requests")
            self._unanswered += 1
        elif isinstance(message, Response):
            if message.msgid in self._abandoned:
                self._abandoned.discard(message.msgid)
                return None
            if message.msgid not in self._pending:
                raise ProtocolError(f"response to unknown msgid {message.msgid}")
            self._pending.discard(message.msgid)
        return message

    def _expect(self, obj: Any, step: str, arity: int) -> list[Any]:
        if not (isinstance(obj, list) and len(obj) >= 3 and obj[0] == MAGIC):
            raise ProtocolError(f"expected handshake {step!r}")
        if len(obj) == 4 and obj[2] == "refused" and isinstance(obj[3], str):
            reason = obj[3][:200]
            if reason.startswith(_FOREIGN):
                raise ForeignCluster(f"the node belongs to {reason}")
            raise AuthenticationError(f"refused by peer: {reason}")
        if obj[1] != PROTOCOL_VERSION:
            if self.role is Role.SERVER:
                self._queue(
                    [
                        MAGIC,
                        PROTOCOL_VERSION,
                        "refused",
                        f"protocol version {_describe(obj[1])} not supported",
                    ]
                )
            raise AuthenticationError(f"peer speaks protocol version {_describe(obj[1])}")
        if obj[2] != step:
            raise ProtocolError(f"expected handshake {step!r}, got {_describe(obj[2])}")
        if len(obj) != arity:
            raise ProtocolError(f"handshake {step!r} of {len(obj)} elements, not {arity}")
        return obj

    def _handshake(self, obj: Any) -> Event | None:
        if self._state is _State.AWAIT_HELLO:
            _, _, _, nonce, key = self._expect(obj, "hello", 5)
            self._peer_nonce = self._check_nonce(nonce)
            if key != "":
                self._secret = self._key_secret(key)
                self.key = key
            server_proof = proof(self._secret, b"server", self._peer_nonce, self._nonce)
            self._queue([MAGIC, PROTOCOL_VERSION, "challenge", self._nonce, server_proof])
            self._state = _State.AWAIT_AUTH
            return None
        if self._state is _State.AWAIT_CHALLENGE:
            _, _, _, nonce, server_proof = self._expect(obj, "challenge", 5)
            self._peer_nonce = self._check_nonce(nonce)
            expected = proof(self._secret, b"server", self._nonce, self._peer_nonce)
            if not isinstance(server_proof, bytes) or not hmac.compare_digest(
                server_proof, expected
            ):
                raise AuthenticationError(f"server did not prove it holds {self._held()}")
            client_proof = proof(self._secret, b"client", self._peer_nonce, self._nonce)
            cluster = self._identity.cluster_id
            self._queue([MAGIC, PROTOCOL_VERSION, "auth", client_proof, cluster])
            self._state = _State.AWAIT_WELCOME
            return None
        if self._state is _State.AWAIT_AUTH:
            _, _, _, client_proof, cluster = self._expect(obj, "auth", 5)
            expected = proof(self._secret, b"client", self._nonce, self._peer_nonce)
            if not isinstance(client_proof, bytes) or not hmac.compare_digest(
                client_proof, expected
            ):
                reason = f"wrong secret for key {self.key}" if self.key else "wrong cluster secret"
                self._queue([MAGIC, PROTOCOL_VERSION, "refused", reason])
                raise AuthenticationError(f"client did not prove it holds {self._held()}")
            mine = self._identity.cluster_id
            if not isinstance(cluster, str) or len(cluster) > 64:
                raise ProtocolError("auth without a cluster id")
            if self._identity.foreign(cluster):
                reason = f"{_FOREIGN}{mine}, not {cluster}"
                self._queue([MAGIC, PROTOCOL_VERSION, "refused", reason])
                raise ForeignCluster(f"a client of cluster {cluster}, not {mine}")
            self._queue([MAGIC, PROTOCOL_VERSION, "welcome", self._node_id, mine])
            self._state = _State.OPEN
            return HandshakeDone(peer_id="")
        if self._state is _State.AWAIT_WELCOME:
            _, _, _, node_id, cluster = self._expect(obj, "welcome", 5)
            if not isinstance(node_id, str) or not isinstance(cluster, str):
                raise ProtocolError("welcome without a node id and cluster id")
            if self._identity.foreign(cluster):
                raise ForeignCluster(
                    f"node {node_id} belongs to cluster {cluster}, not {self._identity.cluster_id}"
                )
            self.peer_id = node_id
            self._state = _State.OPEN
            return HandshakeDone(peer_id=node_id)
        raise ProtocolError(f"unexpected message in state {self._state.name}")

    def _held(self) -> str:
        """What the handshake proves, in words."""
        return f"the secret of key {self.key}" if self.key else "the cluster secret"

    def _key_secret(self, key: Any) -> bytes:
        """The secret of the client key a hello names; refuses one not in force."""
        if not isinstance(key, str) or len(key) > KEY_NAME_MAX:
            raise ProtocolError("hello names a key that is no name")
        secret = self._keys(key) if self._keys is not None else None
        if secret is None:
            reason = f"no key {key!r} in force (never issued, or revoked)"
            self._queue([MAGIC, PROTOCOL_VERSION, "refused", reason])
            raise AuthenticationError(f"client names {reason}")
        return secret

    @staticmethod
    def _check_nonce(nonce: Any) -> bytes:
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
            raise ProtocolError("handshake nonce must be 32 bytes")
        return nonce

    # -- sending -----------------------------------------------------------------------------

    def _require_open(self) -> None:
        if self._state is not _State.OPEN:
            raise ProtocolError(f"connection not open ({self._state.name})")

    def send_request(self, method: str, params: Iterable[Any]) -> tuple[int, list[Buffer]]:
        """Allocate a msgid and encode a request; the caller writes the buffers in order."""
        self._require_open()
        msgid = self._next_msgid
        self._next_msgid = (msgid + 1) % MSGID_MODULUS
        self._pending.add(msgid)
        return msgid, encode([REQUEST, msgid, method, list(params)])

    def abandon(self, msgid: int) -> None:
        """Forget a request whose caller gave up; its late response will be dropped quietly."""
        if msgid in self._pending:
            self._pending.discard(msgid)
            self._abandoned.add(msgid)

    def send_response(self, msgid: int, error: tuple[str, str] | None, result: Any) -> list[Buffer]:
        """Encode the answer to a request received earlier."""
        self._require_open()
        self._unanswered -= 1
        wire_error = list(error) if error is not None else None
        return encode([RESPONSE, msgid, wire_error, result])

    def send_notification(self, method: str, params: Iterable[Any]) -> list[Buffer]:
        self._require_open()
        return encode([NOTIFICATION, method, list(params)])

    def pending_msgids(self) -> set[int]:
        """Requests sent and not yet answered (all fail when the connection drops)."""
        return set(self._pending)
