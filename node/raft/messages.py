"""Raft's values: log entries, persistent state, messages with their wire form, and `Ready`.

Plain data; the algorithm lives in `ringfs.node.raft.core`. A message travels as one
msgpack-ready list of ints, strings, bytes and bools, its fields in dataclass order after a type
tag:

    message   [tag, src, dst, term, field, ...]
    entry     [term, index, kind, data]
    meta      [last_index, last_term, [voter, ...]]

`message_from_wire` checks every type, range and invariant, because its input comes off the
network: anything malformed raises ValueError, never another exception. `refusal` then says
whether a well-formed message may reach this member's core at all (a known sender, this node,
a term within reach).
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Collection
from dataclasses import dataclass, fields
from typing import Literal

NodeId = str

#: Node ids are short names; a newline would break the CONFIG entry encoding.
NODE_ID_MAX = 255
#: Every integer on the wire (terms, indexes, rounds) is at most this: far beyond any term or
#: index a group reaches (an election or an entry per microsecond for 146,000 years), while
#: whatever a member computes from one (term + 1, index + a message's entries) still fits the
#: signed 64 bits of msgpack and SQLite.
MAX_WIRE_INT = 2**62
#: A member takes no message whose term is more than this above its own. A member falls that
#: far behind only after 4 billion elections (136 years at one per second), while one message
#: with a wild term can no longer move a group to where the terms it needs next are refused:
#: a group could take 2**30 such messages before its terms neared `MAX_WIRE_INT`.
MAX_TERM_LEAP = 2**32
#: Entries one AppendRequest may carry (a leader sends at most 64).
MAX_ENTRIES_PER_MESSAGE = 1024
#: Voters a configuration may name.
MAX_VOTERS = 64


class EntryKind(enum.IntEnum):
    NOOP = 0
    COMMAND = 1
    CONFIG = 2


@dataclass(frozen=True, slots=True)
class Entry:
    """One log entry; a CONFIG entry's data is `encode_voters` of the new configuration."""

    term: int
    index: int
    kind: EntryKind
    data: bytes


@dataclass(frozen=True, slots=True)
class HardState:
    """What must survive a crash besides the log: a node votes at most once per term.

    `recovering`: this member may lack entries it once acknowledged (it started with nothing:
    new, or its storage was lost): it votes for no log but an empty one, and campaigns only
    with an empty log, until a leader has brought it up to date.
    """

    term: int
    voted_for: NodeId | None
    recovering: bool = False


#: The state of a member that has never been brought up to date by a leader: a new member, or
#: one whose storage was lost (the two look alike, so both are treated as the second).
NEW_MEMBER = HardState(0, None, recovering=True)


@dataclass(frozen=True, slots=True)
class SnapshotMeta:
    """Where a state machine snapshot ends, and the configuration in force at that point.

    `voters` is kept sorted, so that equal configurations compare and encode alike whoever
    built them; raises ValueError on a bad or repeated id.
    """

    last_index: int
    last_term: int
    voters: tuple[NodeId, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "voters", decode_voters(encode_voters(tuple(sorted(self.voters)))))


def check_node_id(node_id: object) -> NodeId:
    """Return `node_id` if it is a usable node id; raises ValueError otherwise."""
    if type(node_id) is not str or not node_id or len(node_id) > NODE_ID_MAX or "\n" in node_id:
        raise ValueError(f"bad node id {node_id!r}")
    return node_id


def encode_voters(voters: tuple[NodeId, ...]) -> bytes:
    """The data of a CONFIG entry: the voters sorted, one per line; raises ValueError on a
    bad or repeated id."""
    for voter in voters:
        check_node_id(voter)
    if len(set(voters)) != len(voters):
        raise ValueError(f"repeated voter in {voters!r}")
    return "\n".join(sorted(voters)).encode()


def decode_voters(data: bytes) -> tuple[NodeId, ...]:
    """Read a CONFIG entry's data back; raises ValueError unless it is `encode_voters` output."""
    if not data:
        return ()
    try:
        voters = tuple(data.decode().split("\n"))
    except UnicodeDecodeError as exc:
        raise ValueError("voters are not UTF-8") from exc
    if encode_voters(voters) != data:
        raise ValueError("voters are not sorted and unique")
    return voters


# --- messages ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VoteRequest:
    src: NodeId
    dst: NodeId
    term: int
    last_log_index: int
    last_log_term: int
    #: A pre-vote asks "would you vote for me at `term`?" and changes no one's term or vote.
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class VoteResponse:
    src: NodeId
    dst: NodeId
    term: int
    granted: bool
    pre_vote: bool


@dataclass(frozen=True, slots=True)
class AppendRequest:
    src: NodeId
    dst: NodeId
    term: int
    prev_index: int
    prev_term: int
    entries: tuple[Entry, ...]
    commit: int
    #: The leader's heartbeat round when it sent this; echoed back, it proves leadership (reads).
    probe: int
    #: The incarnation of `dst` the leader knows (0: none yet). Carrying the follower's current
    #: one, the request says the leader counts nothing from the follower's earlier lives.
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class AppendResponse:
    src: NodeId
    dst: NodeId
    term: int
    success: bool
    match_index: int
    conflict_index: int
    conflict_term: int
    probe: int
    #: The sender's incarnation: a new one each time it starts (see `Raft`).
    incarnation: int = 0


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """Carries only the metadata: the shell attaches the snapshot bytes."""

    src: NodeId
    dst: NodeId
    term: int
    meta: SnapshotMeta


@dataclass(frozen=True, slots=True)
class SnapshotResponse:
    src: NodeId
    dst: NodeId
    term: int
    last_index: int
    incarnation: int = 0


Message = (
    VoteRequest | VoteResponse | AppendRequest | AppendResponse | SnapshotRequest | SnapshotResponse
)

_Kind = Literal["int", "bool", "node", "entries", "meta"]
_HEAD: tuple[_Kind, ...] = ("node", "node", "int")
# Tags are part of the wire format: never renumber them.
_SCHEMAS: dict[int, tuple[Callable[..., Message], tuple[_Kind, ...]]] = {
    1: (VoteRequest, (*_HEAD, "int", "int", "bool")),
    2: (VoteResponse, (*_HEAD, "bool", "bool")),
    3: (AppendRequest, (*_HEAD, "int", "int", "entries", "int", "int", "int")),
    4: (AppendResponse, (*_HEAD, "bool", "int", "int", "int", "int", "int")),
    5: (SnapshotRequest, (*_HEAD, "meta")),
    6: (SnapshotResponse, (*_HEAD, "int", "int")),
}
_TAGS: dict[object, int] = {cls: tag for tag, (cls, _) in _SCHEMAS.items()}
# Each message class's field values in wire order, looked up once: `fields()` on every message
# cost more than the rest of its encoding.
_VALUES: dict[object, Callable[[Message], tuple[object, ...]]] = {
    cls: operator.attrgetter(*(f.name for f in fields(cls)))  # type: ignore[arg-type]
    for cls in _TAGS
}


# Classes whose fields all go on the wire as they are (no entries, no snapshot position).
_PLAIN = frozenset(cls for cls, kinds in _SCHEMAS.values() if not {"entries", "meta"} & set(kinds))


def message_to_wire(message: Message) -> list[object]:
    """The msgpack-ready list for `message`."""
    kind = type(message)
    values = _VALUES[kind](message)
    if kind in _PLAIN:
        return [_TAGS[kind], *values]
    return [_TAGS[kind], *map(_encode, values)]


def message_from_wire(obj: object) -> Message:
    """Decode and validate a wire list; raises ValueError when anything is malformed."""
    try:
        return _from_wire(obj)
    except ValueError as exc:
        raise ValueError(f"malformed Raft message: {exc}") from exc


def _from_wire(obj: object) -> Message:
    items = _as_list(obj)
    if not items or type(items[0]) is not int or items[0] not in _SCHEMAS:
        raise ValueError("unknown message type")
    make, kinds = _SCHEMAS[items[0]]
    if len(items) != 1 + len(kinds):
        raise ValueError(f"message type {items[0]} takes {len(kinds)} fields, got {len(items) - 1}")
    message = make(*(_DECODERS[kind](item) for kind, item in zip(kinds, items[1:], strict=True)))
    if isinstance(message, AppendRequest):
        _check_append(message)
    elif isinstance(message, SnapshotRequest):
        meta = message.meta
        if meta.last_index < 1 or not 1 <= meta.last_term <= message.term:
            raise ValueError("snapshot position out of range")
    return message


def _encode(value: object) -> object:
    if isinstance(value, tuple):
        return [_encode(item) for item in value]
    if isinstance(value, Entry):
        return [value.term, value.index, int(value.kind), value.data]
    if isinstance(value, SnapshotMeta):
        return [value.last_index, value.last_term, list(value.voters)]
    return value


def _as_list(obj: object) -> list[object]:
    if not isinstance(obj, list | tuple):
        raise ValueError(f"expected a list, got {type(obj).__name__}")
    return list(obj)


def _int(obj: object) -> int:
    # bool is an int subclass: refuse it explicitly.
    if type(obj) is not int or not 0 <= obj <= MAX_WIRE_INT:
        raise ValueError(f"expected an integer from 0 to 2**62, got {obj!r:.40}")
    return obj


def _bool(obj: object) -> bool:
    if type(obj) is not bool:
        raise ValueError(f"expected a bool, got {obj!r}")
    return obj


def _entry(obj: object) -> Entry:
    items = _as_list(obj)
    if len(items) != 4:
        raise ValueError("an entry has 4 fields")
    term, index, kind, data = _int(items[0]), _int(items[1]), EntryKind(_int(items[2])), items[3]
    if type(data) is not bytes:
        raise ValueError("entry data must be bytes")
    if term < 1 or index < 1:
        raise ValueError("entry term and index start at 1")
    if kind is EntryKind.CONFIG:
        decode_voters(data)
    return Entry(term, index, kind, data)


def _entries(obj: object) -> tuple[Entry, ...]:
    items = _as_list(obj)
    if len(items) > MAX_ENTRIES_PER_MESSAGE:
        raise ValueError(f"{len(items)} entries in one message")
    return tuple(_entry(item) for item in items)


def _meta(obj: object) -> SnapshotMeta:
    items = _as_list(obj)
    if len(items) != 3:
        raise ValueError("snapshot meta has 3 fields")
    listed = _as_list(items[2])
    if not 1 <= len(listed) <= MAX_VOTERS:
        raise ValueError(f"{len(listed)} snapshot voters")
    voters = tuple(check_node_id(voter) for voter in listed)
    if voters != tuple(sorted(set(voters))):
        raise ValueError("snapshot voters are not sorted and unique")
    return SnapshotMeta(_int(items[0]), _int(items[1]), voters)


_DECODERS: dict[_Kind, Callable[[object], object]] = {
    "int": _int,
    "bool": _bool,
    "node": check_node_id,
    "entries": _entries,
    "meta": _meta,
}


def _check_append(m: AppendRequest) -> None:
    """The log shape every leader sends: contiguous indices, terms rising up to its own."""
    if m.prev_term > m.term or (m.prev_index == 0) != (m.prev_term == 0):
        raise ValueError("previous entry position out of range")
    term = m.prev_term
    for offset, entry in enumerate(m.entries, start=1):
        if entry.index != m.prev_index + offset or not term <= entry.term <= m.term:
            raise ValueError("entries are not contiguous or their terms do not rise")
        term = entry.term


def refusal(
    message: Message, node_id: NodeId, members: Collection[NodeId], term: int
) -> str | None:
    """Why a well-formed `message` must not reach the core of member `node_id`, whose term is
    `term` and whose group is `members`; None if it may. The core answers every message it
    steps, so one from outside the group would send to a node nobody can reach."""
    if message.dst != node_id:
        return f"addressed to {message.dst!r}"
    if message.src == node_id or message.src not in members:
        return f"from {message.src!r}, not another member of the group"
    if message.term > term + MAX_TERM_LEAP:
        return f"term {message.term} leaps more than 2**32 above {term}"
    return None


# --- Ready ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """What the caller must do after a call, in this order.

    1. Persist (fsync) `hard_state`, delete entries from `truncate_from` on, persist `append`.
    2. If `install_snapshot` is set, install the snapshot bytes that came with the accepted
       SnapshotRequest; they replace the state machine and every entry up to its last index.
       Doing this durably before step 3 is best; a crash in between only loses progress.
    3. Send `messages`; send the current snapshot to each node in `send_snapshot`.
    4. Apply `committed` in order (skipping NOOP and CONFIG entries).
    5. Answer each read in `reads` once the state machine has applied its index; fail the
       reads in `failed_reads`.

    `warnings` are conditions worth an operator's attention (a message dropped as impossible, a
    follower that lost entries it had acknowledged): the caller logs them.
    """

    hard_state: HardState | None = None
    truncate_from: int | None = None
    append: tuple[Entry, ...] = ()
    messages: tuple[Message, ...] = ()
    committed: tuple[Entry, ...] = ()
    reads: tuple[tuple[int, int], ...] = ()
    failed_reads: tuple[int, ...] = ()
    install_snapshot: SnapshotMeta | None = None
    send_snapshot: tuple[NodeId, ...] = ()
    warnings: tuple[str, ...] = ()

    def merge(self, other: Ready) -> Ready:
        """One Ready with the effect of acting on `self` and then on `other`."""
        # Most merges have an empty side (every call of the core merges what it produced
        # into an empty Ready, and most produce little): that side adds nothing.
        if other == EMPTY_READY:
            return self
        if self == EMPTY_READY:
            return other
        truncate_from, append = self.truncate_from, self.append
        if other.truncate_from is not None:
            append = tuple(e for e in append if e.index < other.truncate_from)
            if truncate_from is None or other.truncate_from < truncate_from:
                truncate_from = other.truncate_from
        # A snapshot covers everything committed before it: those entries need no applying.
        committed = other.committed if other.install_snapshot else self.committed + other.committed
        extra = tuple(node for node in other.send_snapshot if node not in self.send_snapshot)
        return Ready(
            hard_state=other.hard_state or self.hard_state,
            truncate_from=truncate_from,
            append=append + other.append,
            messages=self.messages + other.messages,
            committed=committed,
            reads=self.reads + other.reads,
            failed_reads=self.failed_reads + other.failed_reads,
            install_snapshot=other.install_snapshot or self.install_snapshot,
            send_snapshot=self.send_snapshot + extra,
            warnings=self.warnings + other.warnings,
        )


#: A Ready that asks nothing (one shared instance: Readys are frozen).
EMPTY_READY = Ready()
