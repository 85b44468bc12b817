"""Live nodes fuzzed through every method: they stay up, and their metadata replicas agree.

Three node processes. Hypothesis draws requests, as a mount with a client key would send them
and as a holder of the cluster secret: every method name (and unknown ones) with parameters
shaped like the real ones, and often not; metadata commands and queries whose fields are drawn
by name or type from a few inodes and names, so that many of them apply and change the
namespace; and
notifications, Raft messages among them. The properties:

- every request is answered, and never with `EIO` (a handler, or the state machine on every
  replica, failing on what it was given);
- after each one, a normal client is answered by a node (a different one each time);
- at the end, every node answers, none logged a traceback, and the three replicas of the
  metadata, once they applied the same log, hold the same rows.

Not drawn: requests with the cluster secret that a holder of it may use to take the cluster
apart by design (`map.change`, `paxos.*`, well-formed Raft messages: see docs/security.md).
Their decoders are fuzzed in `tests/unit/test_fuzz.py`. The default run draws `FAST` requests;
the slow tier draws `SLOW`, in `PARTS` tests, each on a cluster of its own.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ringfs.node.meta import commands as cmd
from ringfs.node.meta.client_ids import mint_client_id
from ringfs.node.meta.schema import TABLES
from ringfs.node.rpc.client import split_address
from ringfs.node.rpc.protocol import Connection, Response, Role
from ringfs.node.service import CLIENT_METHODS
from tests.e2e.conftest import Cluster
from tests.unit.test_fuzz import scalars

FAST = 2_000
SLOW = 100_000
PARTS = 5
#: Seconds a request may take: a metadata command waits for a Raft round at most.
ANSWER_WITHIN = 20.0
CLIENT_ID = b"fuzzing client 1"

# -- what is drawn --------------------------------------------------------------------------

# What msgpack can carry, nested, as a well-behaved peer frames it (maps with str keys: any
# other key is a framing error that closes the connection, fuzzed in tests/unit/test_fuzz.py).
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=24,
)

inos = st.integers(0, 12) | st.sampled_from([2**63 - 1, -1, 2**64 - 1])
names = st.sampled_from([b"a", b"b", b"c", b"d", b"x" * 255]) | st.sampled_from(
    [b"..", b".", b"", b"x" * 256, b"a/b", b"a\0"]
)
ids = st.binary(min_size=16, max_size=16) | st.binary(max_size=20)
small = st.integers(-1, 5) | st.integers(0, 2**63 - 1)
optional_small = st.none() | small
chunk_wire = st.builds(
    lambda idx, block, length, data: [idx, block, length, hashlib.sha256(data).digest(), data],
    st.integers(0, 3),
    ids,
    st.integers(0, 70_000),
    st.binary(max_size=64),
)
update_wire = st.builds(lambda chunk, base, length: [chunk, base, length], chunk_wire, ids, small)

#: A strategy for each field type of the metadata messages (their annotations' text).
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "int": st.one_of(inos, small, st.sampled_from([0o40755, 0o100644, 0o120777, 0o10644])),
    "int | None": optional_small,
    "bytes": st.one_of(names, ids, st.just(CLIENT_ID)),
    "bytes | None": st.none() | names,
    "str | None": st.none() | st.text(max_size=8),
    "tuple[int, ...]": st.lists(inos, max_size=4),
    "tuple[bytes, ...]": st.lists(ids, max_size=4),
    "tuple[ChunkUpdate, ...]": st.lists(update_wire, max_size=3),
}


directories = st.sampled_from([1, 1, 1, 2, 3, 4]) | inos
#: Fields drawn by name first: values that let a command go through more often than not.
NAMED: dict[str, st.SearchStrategy[Any]] = {
    "parent": directories,
    "new_parent": directories,
    "mode": st.sampled_from([0o40755, 0o100644, 0o644, 0o10600, 0o140755, 0o2775, 0]) | small,
    "ino": st.sampled_from([0, 0, 0, 1, 2, 3, 4, 5, 6]) | inos,
    "uid": st.sampled_from([0, 1000]) | small,
    "gid": st.sampled_from([0, 1000]) | small,
    "now_ns": st.integers(0, 2**62),
}


def message(cls: type[Any], depth: int = 0) -> st.SearchStrategy[list[Any]]:
    """A wire form of `cls`, its fields drawn by name or by type (a batch holds commands of
    its own)."""
    parts = []
    for field in fields(cls):
        kind = str(field.type)
        if kind == "tuple[Command, ...]":
            inner = commands(depth + 1) if depth < 1 else st.just([])
            parts.append(st.lists(inner, max_size=3))
        elif field.name in NAMED and kind == "int":
            parts.append(NAMED[field.name])
        else:
            parts.append(FIELDS[kind])
    return st.tuples(*parts).map(lambda drawn: [cls.OP, *drawn])


def commands(depth: int = 0) -> st.SearchStrategy[list[Any]]:
    return st.one_of(*(message(c, depth) for c in cmd.COMMANDS.values()))


queries = st.one_of(*(message(c) for c in cmd.QUERIES.values()))
anything = st.lists(values, max_size=5)
maybe_epoch = st.lists(st.integers(0, 50) | values, max_size=1)

#: Parameters shaped like each method's (often well-formed), or anything at all.
PARAMS: dict[str, st.SearchStrategy[list[Any]]] = {
    "block.put": st.builds(
        lambda data, good, epoch: [
            os.urandom(16),
            hashlib.sha256(data).digest() if good else os.urandom(32),
            data,
            *epoch,
        ],
        st.binary(max_size=4096),
        st.booleans(),
        maybe_epoch,
    ),
    "block.get": st.builds(lambda i, epoch: [i, *epoch], ids, maybe_epoch),
    "block.verify": st.lists(ids, min_size=1, max_size=1),
    "block.delete": st.lists(ids, min_size=1, max_size=1),
    "node.info": maybe_epoch,
    "meta.apply": st.builds(
        lambda client, seq, acked, command: [client, seq, acked, command],
        st.just(CLIENT_ID) | ids,
        st.none() | st.integers(0, 10_000),
        st.none() | st.integers(0, 10_000),
        commands() | anything,
    ),
    "meta.query": st.lists(queries | values, min_size=1, max_size=1),
    "meta.changes": st.tuples(st.integers(0, 2**63 - 1) | values, ids).map(list),
}
CLIENT_ONLY = sorted(CLIENT_METHODS)
#: What a holder of the cluster secret is fuzzed with (see the module's docstring).
NODE_METHODS = [*CLIENT_ONLY, "node.stats", "block.verify", "block.delete", "repair.start",
                "repair.status", "meta.status"]  # fmt: skip
EVERY_METHOD = [*NODE_METHODS, "map.change", "paxos.prepare", "paxos.accept", "raft.message",
                "raft.snapshot_part", "no.such.method", ""]  # fmt: skip


def params_for(method: str) -> st.SearchStrategy[list[Any]]:
    return PARAMS.get(method, anything) | anything


def call(methods: list[str]) -> st.SearchStrategy[tuple[str, list[Any]]]:
    return st.sampled_from(methods).flatmap(lambda m: params_for(m).map(lambda p: (m, p)))


# Metadata commands of the fuzzing client's session, well-formed in shape: most reach the
# state machine, and many change the namespace.
session_commands = st.builds(
    lambda seq, acked, command: ["meta.apply", [CLIENT_ID, seq, acked, command]],
    st.none() | st.integers(10**4, 10**9),  # above what `acked_below` is drawn up to
    st.none() | st.integers(0, 100),
    commands(),
)
session_queries = st.builds(lambda query: ["meta.query", [query]], queries)

#: (as a key or with the secret, a request or a notification, (method, params)); the
#: metadata's commands and queries drawn most often, since they reach the most code.
cases = st.one_of(
    st.tuples(st.just("key"), st.just("request"), session_commands),
    st.tuples(st.just("key"), st.just("request"), session_commands),
    st.tuples(st.just("key"), st.just("request"), session_commands),
    st.tuples(st.just("key"), st.just("request"), session_queries),
    st.tuples(st.just("secret"), st.just("request"), session_commands),
    st.tuples(st.just("key"), st.just("request"), call(EVERY_METHOD)),
    st.tuples(st.just("key"), st.just("notify"), call(["raft.message", *CLIENT_ONLY])),
    st.tuples(st.just("secret"), st.just("request"), call(NODE_METHODS)),
    st.tuples(st.just("secret"), st.just("notify"), st.tuples(
        st.just("raft.message"), st.lists(values | st.lists(values, max_size=8), max_size=2))),
)  # fmt: skip


# -- a blocking peer ------------------------------------------------------------------------


class Peer:
    """One connection to a node, blocking: what the fuzzer sends its requests through."""

    def __init__(self, address: str, secret: bytes, key: str = "") -> None:
        self.sock = socket.create_connection(split_address(address), timeout=ANSWER_WITHIN)
        self.conn = Connection(Role.CLIENT, secret, key=key)
        self.closed = False
        while not self.conn.is_open:
            self._flush()
            if not self.conn.is_open:
                self._receive()

    def _flush(self) -> None:
        for buffer in self.conn.data_to_send():
            self.sock.sendall(buffer)

    def _receive(self) -> list[Any]:
        data = self.sock.recv(1 << 20)
        if not data:
            self.closed = True
            raise ConnectionError("closed by the node")
        return self.conn.receive_data(data)

    def request(self, method: str, params: list[Any]) -> Response:
        msgid, buffers = self.conn.send_request(method, params)
        for buffer in buffers:
            self.sock.sendall(buffer)
        while True:
            for event in self._receive():
                if isinstance(event, Response) and event.msgid == msgid:
                    return event

    def notify(self, method: str, params: list[Any]) -> None:
        for buffer in self.conn.send_notification(method, params):
            self.sock.sendall(buffer)

    def close(self) -> None:
        self.sock.close()
        self.closed = True


class Fuzzer:
    """The peers the cases go through, opened again whenever a node closed one."""

    def __init__(self, cluster: Cluster, secret: bytes, key: tuple[str, bytes]) -> None:
        self.addresses = cluster.seeds.split(",")
        self.secret, self.key = secret, key
        # The fuzzing client's id as its key minted it: where a case names `CLIENT_ID`.
        self.client_id = mint_client_id(key[1])
        self.peers: dict[tuple[str, str], Peer] = {}
        self.served = 0
        # Where metadata calls go: the leader, as far as the last answer told.
        self.leader = self.addresses[0]

    def peer(self, role: str, address: str) -> Peer:
        peer = self.peers.get((role, address))
        if peer is None or peer.closed:
            if peer is not None:
                peer.close()
            name, secret = self.key if role == "key" else ("", self.secret)
            peer = self.peers[(role, address)] = Peer(address, secret, name)
        return peer

    def open_session(self) -> None:
        """Open the fuzzing client's session, so that its well-formed commands apply; finds
        the leader."""
        opening = [CLIENT_ID, None, None, cmd.OpenSession().to_wire()]
        deadline = time.monotonic() + ANSWER_WITHIN
        while self.request("key", "meta.apply", opening).error is not None:
            assert time.monotonic() < deadline, "no metadata leader"
            time.sleep(0.1)

    def request(self, role: str, method: str, params: list[Any]) -> Response:
        """Send one request (a metadata one to the leader, others to each node in turn);
        follow a leader that moved."""
        if isinstance(params, list):
            params = [self.client_id if p == CLIENT_ID else p for p in params]
        meta = method.startswith("meta.")
        address = self.leader if meta else self.addresses[self.served % len(self.addresses)]
        answer = self.peer(role, address).request(method, params)
        if meta and answer.error is not None and answer.error[0] in ("ENOTLEADER", "ENOTMETA"):
            following = (self.addresses.index(address) + 1) % len(self.addresses)
            self.leader = self.addresses[following]
        return answer

    def run(self, role: str, kind: str, method: str, params: list[Any]) -> None:
        self.served += 1
        if kind == "notify":
            peer = self.peer(role, self.addresses[self.served % len(self.addresses)])
            peer.notify(method, params)
            if role == "key":  # a client may send none: the node closes its connection
                peer.close()
        else:
            answer = self.request(role, method, params)
            # EIO is a handler, or the state machine, failing on what it was given.
            assert answer.error is None or answer.error[0] != "EIO", (
                f"{method} {params!r} failed inside the node: {answer.error}"
            )
        # A normal client, on another node each time, is answered.
        checker = self.peer("secret", self.addresses[(self.served + 1) % len(self.addresses)])
        assert checker.request("node.info", []).error is None

    def close(self) -> None:
        for peer in self.peers.values():
            peer.close()


# -- the checks at the end ------------------------------------------------------------------


def replica_rows(data_dir: Path) -> list[Any]:
    """Every row of every table of a node's metadata replica (read-only, while it runs)."""
    db = sqlite3.connect(f"file:{data_dir / 'meta.db'}?mode=ro", uri=True)
    try:
        return [[t, sorted(db.execute(f"SELECT * FROM {t}").fetchall())] for t in TABLES]
    finally:
        db.close()


def applied(rows: list[Any]) -> int:
    [counters] = [table for name, table in rows if name == "counters"]
    return int(dict(counters)["applied_index"])


def assert_replicas_agree(cluster: Cluster) -> None:
    """Once the three replicas applied the same log, their rows are the same."""
    deadline = time.monotonic() + 30
    while True:
        dumps = [replica_rows(node.data) for node in cluster.nodes]
        if len({applied(rows) for rows in dumps}) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # a member is still applying, or the collector committed meanwhile
    assert len({applied(rows) for rows in dumps}) == 1, [applied(rows) for rows in dumps]
    for rows in dumps[1:]:
        assert rows == dumps[0]


@pytest.fixture
def fuzzer(cluster: Cluster) -> Iterator[Fuzzer]:
    key_file = cluster.key_file("fuzz")
    _, name, secret = key_file.read_text().split()
    running = Fuzzer(cluster, cluster.secret_file.read_text().strip().encode(),
                     (name, bytes.fromhex(secret)))  # fmt: skip
    running.open_session()
    try:
        yield running
    finally:
        running.close()
    for node in cluster.nodes:
        checker = Peer(node.address, running.secret)
        assert checker.request("node.info", []).error is None
        checker.close()
        assert "Traceback" not in (cluster.root / f"{node.name}.log").read_text()
    assert_replicas_agree(cluster)


def fuzz_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # the cluster keeps what each case did: nothing to shrink
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@fuzz_settings(FAST)
@given(cases)
def test_live_nodes_answer_every_request_and_keep_their_replicas_equal(
    fuzzer: Fuzzer, case: tuple[str, str, list[Any]]
) -> None:
    role, kind, (method, params) = case
    fuzzer.run(role, kind, method, params)


@pytest.mark.parametrize("part", [pytest.param(n, marks=pytest.mark.slow) for n in range(PARTS)])
@fuzz_settings(SLOW // PARTS)
@given(cases)
def test_live_nodes_answer_every_request_and_keep_their_replicas_equal_slow(
    part: int, fuzzer: Fuzzer, case: tuple[str, str, list[Any]]
) -> None:
    role, kind, (method, params) = case
    fuzzer.run(role, kind, method, params)
