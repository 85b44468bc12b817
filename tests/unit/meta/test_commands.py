"""Metadata commands, queries and results on the wire: round trips and strict rejection."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from ringfs.node.errors import NodeError, ProtocolError
from ringfs.node.meta.commands import (
    COMMANDS,
    QUERIES,
    Abandon,
    Attr,
    Batch,
    BlockRef,
    Blocks,
    Chunk,
    ChunkUpdate,
    Clients,
    CommitChunks,
    Delegate,
    DirEntry,
    Entry,
    Expire,
    ForgetGarbage,
    FsInfo,
    FsStats,
    Garbage,
    GetAttr,
    GetXattr,
    Init,
    Link,
    ListXattr,
    Lookup,
    Mkdir,
    Mknod,
    OpenSession,
    Outcome,
    Purge,
    ReadChunks,
    ReadDir,
    ReadLink,
    Release,
    RemoveXattr,
    Rename,
    Reserve,
    Rmdir,
    Setattr,
    SetXattr,
    Symlink,
    Unlink,
    command_from_wire,
    decode_result,
    encode_result,
    query_from_wire,
)

BLOCK = bytes(range(16))
SUM = bytes(range(32))
CHUNK = Chunk(3, BLOCK, 100, SUM)
ATTR = Attr(7, 0o100644, 1, 1000, 1000, 0, 5, 8, 1, 2, 3, 4, 0)

COMMAND_SAMPLES = [
    Init(4096, 0, 0, 1),
    Mknod(1, b"f", 0o100644, 0, 1000, 1000, 2),
    Mkdir(1, b"d", 0o755, 1000, 1000, 3),
    Symlink(1, b"l", b"/target", 1000, 1000, 4),
    Link(2, 1, b"g", 5),
    Unlink(1, b"f", 6),
    Rmdir(1, b"d", 7),
    Rename(1, b"a", 2, b"b", 1, 8),
    Setattr(2, 0o600, None, 5, None, 9, None, 10),
    CommitChunks(
        2,
        (ChunkUpdate(CHUNK, b"", 0), ChunkUpdate(Chunk(4, BLOCK, 1, SUM), BLOCK, 9)),
        20000,
        None,
        None,
        None,
        None,
        11,
    ),
    CommitChunks(2, (), 20000, 12, 3, 4, 0o600, 11),
    SetXattr(2, b"user.x", b"\x00value", 1, 12),
    RemoveXattr(2, b"user.x", 13),
    Purge((2, 7)),
    OpenSession(),
    Expire((b"gone", b"also gone")),
    ForgetGarbage((BLOCK, bytes(16))),
    Abandon((BLOCK,), (4096,)),
    Mknod(1, b"f2", 0o100644, 0, 1000, 1000, 2, 40),
    Reserve(1024),
    Delegate(2),
    Release((2, 3), b"client"),
    Batch((2,), (Mkdir(2, b"d", 0o755, 1000, 1000, 3, 41), Delegate(41), Unlink(2, b"f", 6))),
]
QUERY_SAMPLES = [
    Lookup(1, b"f"),
    GetAttr(1),
    ReadDir(1, 0, 100),
    ReadLink(4),
    GetXattr(2, b"user.x"),
    ListXattr(2),
    ReadChunks(2, 0, 100),
    FsInfo(),
    Garbage(10),
    Blocks(bytes(16), b"\xff" * 16, 100),
    Clients(b"", 10),
]


def _einval(decode: Any, wire: object) -> None:
    with pytest.raises(NodeError) as info:
        decode(wire)
    assert info.value.name == "EINVAL"


def test_samples_cover_every_op() -> None:
    assert {type(c) for c in COMMAND_SAMPLES} == set(COMMANDS.values())
    assert {type(q) for q in QUERY_SAMPLES} == set(QUERIES.values())
    assert not set(COMMANDS) & set(QUERIES)


def test_wire_form_is_op_then_fields_in_order() -> None:
    assert Rename(1, b"a", 2, b"b", 1, 8).to_wire() == ["rename", 1, b"a", 2, b"b", 1, 8]
    assert FsInfo().to_wire() == ["fsinfo"]
    commit = CommitChunks(2, (ChunkUpdate(CHUNK, BLOCK, 7),), 5, None, None, None, None, 6)
    assert commit.to_wire() == [
        "commit_chunks",
        2,
        [[[3, BLOCK, 100, SUM, b"", b""], BLOCK, 7]],
        5,
        None,
        None,
        None,
        None,
        6,
    ]
    assert Setattr(2, None, None, None, 0, None, None, 1).to_wire()[1:] == [2] + [None] * 3 + [
        0,
        None,
        None,
        1,
    ]


@pytest.mark.parametrize("command", COMMAND_SAMPLES, ids=lambda c: c.OP)
def test_command_round_trip_through_msgpack(command: Any) -> None:
    packed = msgpack.packb(command.to_wire(), use_bin_type=True)
    assert command_from_wire(msgpack.unpackb(packed, raw=False)) == command
    assert command_from_wire(msgpack.unpackb(packed, raw=False, use_list=False)) == command


@pytest.mark.parametrize("query", QUERY_SAMPLES, ids=lambda q: q.OP)
def test_query_round_trip_through_msgpack(query: Any) -> None:
    packed = msgpack.packb(query.to_wire(), use_bin_type=True)
    assert query_from_wire(msgpack.unpackb(packed, raw=False)) == query


@pytest.mark.parametrize(
    "wire",
    [
        None,
        "mknod",
        {"op": "mknod"},
        [],
        [b"mknod", 1, b"f", 0o644, 0, 0, 0, 1],  # op name as bytes
        ["nosuch", 1],
        ["lookup", 1, b"f"],  # a query is not a command
        ["mknod", 1, b"f", 0o644, 0, 0, 0],  # too few fields
        ["mknod", 1, b"f", 0o644, 0, 0, 0, 1, 2, 3],  # too many
        ["mknod", 1, "f", 0o644, 0, 0, 0, 1, 0],  # str where bytes belong
        ["mknod", 1, bytearray(b"f"), 0o644, 0, 0, 0, 1, 0],
        ["mknod", True, b"f", 0o644, 0, 0, 0, 1, 0],  # bool is not an int here
        ["mknod", 1.0, b"f", 0o644, 0, 0, 0, 1, 0],
        ["mknod", None, b"f", 0o644, 0, 0, 0, 1, 0],
        ["mknod", 2**63, b"f", 0o644, 0, 0, 0, 1, 0],  # beyond SQLite's integers
        ["setattr", 1, "x", None, None, None, None, None, 1],
        ["commit_chunks", 2, [[0, BLOCK, 1]], 1, 1],  # chunk arity
        ["commit_chunks", 2, [[0, BLOCK[:15], 1, SUM]], 1, 1],  # short block id
        ["commit_chunks", 2, [[0, BLOCK, 1, SUM[:31]]], 1, 1],  # short checksum
        ["commit_chunks", 2, [[-1, BLOCK, 1, SUM]], 1, 1],
        ["commit_chunks", 2, [[0, BLOCK, -1, SUM]], 1, 1],
        ["commit_chunks", 2, [0, BLOCK, 1, SUM], 1, 1],  # a chunk, not a list of them
        ["commit_chunks", 2, b"chunks", 1, 1],
        ["forget_garbage", [BLOCK, "x" * 16]],
        ["batch", [], [["batch", [], []]], 1],  # too many
        ["batch", [], ["mknod"]],  # a malformed command inside
        ["release", [1], "client"],
    ],
)
def test_malformed_commands_are_einval(wire: object) -> None:
    _einval(command_from_wire, wire)


@pytest.mark.parametrize(
    "wire",
    [
        ["mknod", 1, b"f", 0o644, 0, 0, 0, 1],  # a command is not a query
        ["fsinfo", 1],
        ["lookup", 1, "f"],
        ["readdir", 1, 0],
        ["garbage", "10"],
    ],
)
def test_malformed_queries_are_einval(wire: object) -> None:
    _einval(query_from_wire, wire)


def test_values_round_trip_and_reject_bad_shapes() -> None:
    entry = DirEntry(5, b"name", ATTR)
    stats = FsStats(4096, 10, 12345, 2, 8192)
    assert Attr.from_wire(ATTR.to_wire()) == ATTR
    assert Chunk.from_wire(CHUNK.to_wire()) == CHUNK
    assert DirEntry.from_wire(entry.to_wire()) == entry
    assert entry.to_wire() == [5, b"name", ATTR.to_wire()]
    assert FsStats.from_wire(stats.to_wire()) == stats
    _einval(Attr.from_wire, ATTR.to_wire()[:-1])
    _einval(Attr.from_wire, [*ATTR.to_wire()[:-1], "4"])
    _einval(Attr.from_wire, [*ATTR.to_wire()[:-1], True])  # bool is not an int here
    _einval(Attr.from_wire, [*ATTR.to_wire()[:-1], 2**63])
    _einval(Attr.from_wire, [*ATTR.to_wire()[:-1], -(2**63) - 1])
    assert Attr.from_wire([*ATTR.to_wire()[:-1], -(2**63)]).xattrs == -(2**63)
    _einval(DirEntry.from_wire, [5, "name", ATTR.to_wire()])
    _einval(DirEntry.from_wire, [5, b"name", ATTR.to_wire()[:3]])


def test_entry_and_outcome_round_trip() -> None:
    for entry in (Entry(Unlink(1, b"f", 6)), Entry(Purge((3,)), b"client", 7, 5)):
        packed = msgpack.packb(entry.to_wire(), use_bin_type=True)
        assert Entry.from_wire(msgpack.unpackb(packed, raw=False)) == entry
    assert Entry(Purge((3,)), b"c", 7, 5).to_wire() == [["purge", [3]], b"c", 7, 5]
    _einval(Entry.from_wire, [["purge", 3], "client", 7, 5])
    _einval(Entry.from_wire, [["getattr", 3], None, None, None])
    outcome = Outcome([1, b"x"], None)
    assert Outcome.from_wire(outcome.to_wire()) == outcome
    assert Outcome.from_wire([None, "ENOENT"]) == Outcome(None, "ENOENT")
    _einval(Outcome.from_wire, [None, b"ENOENT"])


def test_an_outcome_carries_its_wire_form_result_as_it_is() -> None:
    """A batch's result holds an outcome per command, each in wire form already: encoding
    the batch's outcome must not walk (copy) them again, and packs to the same bytes."""
    inner = [Outcome(ATTR.to_wire(), None).to_wire(), Outcome((7, 9), "EDELEGATED").to_wire()]
    outcome = Outcome(encode_result(inner), None)
    assert outcome.to_wire()[0] is outcome.result
    packed = msgpack.packb(outcome.to_wire(), use_bin_type=True)
    unpacked = msgpack.unpackb(packed, raw=False)
    assert unpacked == [[[ATTR.to_wire(), None], [[7, 9], "EDELEGATED"]], None]


@pytest.mark.parametrize(
    ("request_", "value"),
    [
        (Init(1, 0, 0, 0), None),
        (Mknod(1, b"f", 0, 0, 0, 0, 0), ATTR),
        (Rename(1, b"a", 1, b"b", 0, 0), ATTR),
        (Rename(1, b"a", 1, b"b", 0, 0), None),
        (ReadLink(1), b"target"),
        (ListXattr(1), [b"user.a", b"user.b"]),
        (Garbage(5), [BLOCK]),
        (Blocks(BLOCK, BLOCK, 5), [BlockRef(BLOCK, bytes(32))]),
        (Clients(b"a", 5), [b"b", b"c"]),
        (ReadDir(1, 0, 5), [DirEntry(2, b"a", ATTR), DirEntry(9, b"b", ATTR)]),
        (ReadChunks(7, 0, 10), (ATTR, [CHUNK])),
        (FsInfo(), FsStats(4096, 3, 100, 1, 10)),
    ],
)
def test_results_round_trip_through_msgpack(request_: Any, value: Any) -> None:
    wire = msgpack.unpackb(msgpack.packb(encode_result(value), use_bin_type=True), raw=False)
    assert decode_result(request_, wire) == value


@pytest.mark.parametrize(
    ("request_", "wire"),
    [
        (Init(1, 0, 0, 0), 0),
        (GetAttr(1), None),
        (GetAttr(1), [1, 2, 3]),
        (ReadLink(1), "target"),
        (ListXattr(1), [b"a", "b"]),
        (ReadDir(1, 0, 5), [[2, b"a"]]),
        (ReadChunks(7, 0, 10), [ATTR.to_wire()]),
        (FsInfo(), [4096, 3]),
    ],
)
def test_malformed_results_are_protocol_errors(request_: Any, wire: object) -> None:
    with pytest.raises(ProtocolError):
        decode_result(request_, wire)


def test_encode_result_gives_plain_lists() -> None:
    assert encode_result((ATTR, [CHUNK])) == [ATTR.to_wire(), [CHUNK.to_wire()]]
    assert encode_result([DirEntry(2, b"a", ATTR)]) == [[2, b"a", ATTR.to_wire()]]
    assert encode_result(b"x") == b"x"


def test_a_record_from_before_its_last_fields_were_added_still_decodes() -> None:
    """A chunk in a log entry written before chunks had tails (or inline data)."""
    assert Chunk.from_wire([3, BLOCK, 100, SUM, b""]) == Chunk(3, BLOCK, 100, SUM)
    assert Chunk.from_wire([3, BLOCK, 100, SUM]) == Chunk(3, BLOCK, 100, SUM)
    with pytest.raises(NodeError, match="Chunk takes 6 fields, got 3"):
        Chunk.from_wire([3, BLOCK, 100])


def test_a_cut_keeps_what_is_left_of_the_tail() -> None:
    tailed = Chunk(3, BLOCK, 100, SUM, tail=b"t" * 40)
    assert tailed.stored_length == 60
    assert tailed.cut(200) is tailed
    assert tailed.cut(70) == Chunk(3, BLOCK, 70, SUM, tail=b"t" * 10)
    assert tailed.cut(60) == Chunk(3, BLOCK, 60, SUM)
    assert tailed.cut(30) == Chunk(3, BLOCK, 30, SUM)
    # Identity: a chunk's block when it has no tail; else it changes with the tail.
    assert Chunk(3, BLOCK, 60, SUM).identity == BLOCK
    assert tailed.identity not in (BLOCK, tailed.cut(99).identity)
